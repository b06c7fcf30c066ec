"""Write one lm-eval task YAML per MMLU subject, plus the category groups (run once; output is
committed). Mirrors lm-eval 0.4.13's `tasks/mmlu/default`, with `lmforge_` names and local data (lmforge.benchmarks.mmlu.reader)."""

from pathlib import Path

from lmforge.benchmarks.mmlu.reader import MMLU_SUBJECTS

HERE = Path(__file__).parent
CATEGORIES = ("stem", "other", "social_sciences", "humanities")

for subject, category in MMLU_SUBJECTS.items():
    words = subject.replace("_", " ")
    description = f"The following are multiple choice questions (with answers) about {words}.\\n\\n"
    (HERE / f"lmforge_mmlu_{subject}.yaml").write_text(
        f'"task": "lmforge_mmlu_{subject}"\n'
        f'"task_alias": "{subject}"\n'
        f'"tag": "lmforge_mmlu_{category}_tasks"\n'
        f'"include": "_default_template_yaml"\n'
        f'"dataset_kwargs":\n  "subject": "{subject}"\n'
        f'"description": "{description}"\n'
    )

for category in CATEGORIES:
    (HERE / f"_lmforge_mmlu_{category}.yaml").write_text(
        f"group: lmforge_mmlu_{category}\ngroup_alias: {category}\ntask:\n"
        f"  - lmforge_mmlu_{category}_tasks\naggregate_metric_list:\n  - metric: acc\n"
        "    weight_by_size: True\nmetadata:\n  version: 2\n"
    )
