"""robots.txt as RFC 9309 reads it: ``urllib.robotparser`` for the rules, plus ``Crawl-delay``
for the user agent, and the two verdicts for a robots.txt that cannot be read."""

from __future__ import annotations

import contextlib
import urllib.robotparser
from dataclasses import dataclass



def _agent_token(user_agent: str) -> str:
    return user_agent.split("/")[0].strip().lower()


def parse_crawl_delay(robots_txt: str, user_agent: str) -> float | None:
    """The Crawl-delay of the group that applies to ``user_agent`` (fractions allowed).

    ``RobotFileParser.crawl_delay`` accepts whole seconds only; sites write ``0.5`` too.
    """
    token = _agent_token(user_agent)
    groups: list[tuple[list[str], float | None]] = []
    agents: list[str] = []
    delay: float | None = None
    in_rules = False
    for raw in robots_txt.splitlines():
        line = raw.split("#", 1)[0].strip()
        if ":" not in line:
            continue
        key, value = (x.strip() for x in line.split(":", 1))
        key = key.lower()
        if key == "user-agent":
            if in_rules:  # a user-agent line after rules starts a new group
                groups.append((agents, delay))
                agents, delay, in_rules = [], None, False
            agents.append(value.lower())
        else:
            in_rules = True
            if key == "crawl-delay":
                with contextlib.suppress(ValueError):
                    delay = float(value)
    if agents:
        groups.append((agents, delay))
    specific = [d for a, d in groups if any(x != "*" and x in token for x in a)]
    default = [d for a, d in groups if "*" in a]
    for d in specific or default:
        if d is not None and d >= 0:
            return d
    return None


@dataclass
class _Robots:
    parser: urllib.robotparser.RobotFileParser
    delay: float | None = None
    unavailable: str = ""   # why robots.txt could not be read (then nothing may be fetched)


def _robots_from_text(text: str, user_agent: str) -> _Robots:
    rp = urllib.robotparser.RobotFileParser()
    rp.parse(text.splitlines())
    return _Robots(rp, parse_crawl_delay(text, user_agent))


def _robots_allow_all() -> _Robots:
    rp = urllib.robotparser.RobotFileParser()
    rp.allow_all = True
    return _Robots(rp)


def _robots_disallow_all(reason: str) -> _Robots:
    rp = urllib.robotparser.RobotFileParser()
    rp.disallow_all = True
    return _Robots(rp, unavailable=reason)
