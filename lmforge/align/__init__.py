"""Past SFT: preference data and DPO, a reward model, GRPO with verifiable rewards, and arena
ratings. Each stage is one module with a pydantic config and a ``main(argv)`` (``lmforge dpo``,
``lmforge grpo``, ...); training stages run on the shared loop (``lmforge.train.loop``) with
their own objective."""
