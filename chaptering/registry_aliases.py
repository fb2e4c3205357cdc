"""Deciding what serves: record the gate's verdict, move the `champion` alias, roll it back.

The serving side only ever asks for `models:/<name>@champion`, so every decision about what users see is
one alias move here. The verdict is kept where each reader looks: the version gets a `decision` tag and a
one-line description (the versions table in MLflow's UI), the run gets the full reasons as tags and as
`decision.md` (next to its metrics and plots in Compare), and a promotion remembers the outgoing
champion on the new version (`previous_champion`: what `rollback` returns to).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chaptering.registry_store import (
    CHAMPION,
    DECISION_ARTIFACT,
    NO_CHAMPION,
    _alias_version,
    _client,
    _get_version,
    _now,
    _tag_value,
)

if TYPE_CHECKING:  # pragma: no cover
    from chaptering.config import Settings
    from chaptering.gate import Verdict


def describe(decision: Verdict) -> str:
    """One line for the versions table: the outcome, how many checks failed, and the headline check."""
    outcome = "promoted" if decision.promote else "rejected"
    failed = sum(r.startswith("FAIL") for r in decision.reasons)
    first = decision.reasons[0].removeprefix("ok: ").removeprefix("FAIL: ") if decision.reasons else ""
    counts = f" ({failed} of {len(decision.reasons)} checks failed)" if failed else ""
    return f"{outcome}{counts}: {first}"[:1000]


def _decision_markdown(version: str, decision: Verdict, decided_at: str) -> str:
    outcome = "promoted to champion" if decision.promote else "rejected: champion unchanged"
    lines = [f"# Version {version}: {outcome}", "", f"Decided at {decided_at}.", ""]
    return "\n".join(lines + [f"- {r}" for r in decision.reasons]) + "\n"


def decide_and_promote(version: str, decision: Verdict, settings: Settings) -> None:
    """Record the verdict (module notes); only on `promote`, remember the outgoing champion on the new
    version and move the alias. A refusal leaves `champion` untouched."""
    client, name, version = _client(settings), settings.registered_model, str(version)
    mv = _get_version(client, name, version)
    outcome, decided_at = ("promoted" if decision.promote else "rejected"), _now()
    client.set_model_version_tag(name, version, "decision", outcome)
    client.update_model_version(name, version, description=describe(decision))
    if mv.run_id:
        _record_on_run(client, mv.run_id, version, decision, decided_at)
    if not decision.promote:
        return
    current = _alias_version(client, name, CHAMPION)
    if current is not None and str(current.version) != version:
        client.set_model_version_tag(name, version, "previous_champion", str(current.version))
    client.set_registered_model_alias(name, CHAMPION, version)


def _record_on_run(client: Any, run_id: str, version: str, decision: Verdict, decided_at: str) -> None:
    """Run tags (mutable, unlike params: a manual promotion may overrule the gate) and the decision file."""
    tags = {"decision": "promoted" if decision.promote else "rejected",
            "decision_reasons": "\n".join(decision.reasons), "decided_at": decided_at,
            "registered_version": version}
    for key, value in tags.items():
        client.set_tag(run_id, key, _tag_value(value))
    client.log_text(run_id, _decision_markdown(version, decision, decided_at), DECISION_ARTIFACT)


def promote(version: str, settings: Settings, reason: str = "manual") -> None:
    """Make VERSION the champion regardless of the gate; the reason is kept on the version and its run."""
    from chaptering.gate import Verdict

    decide_and_promote(str(version), Verdict(True, [reason]), settings)


def rollback(settings: Settings) -> str:
    """Move `champion` back to the version it replaced (the `previous_champion` tag); returns it."""
    client, name = _client(settings), settings.registered_model
    current = _alias_version(client, name, CHAMPION)
    if current is None:
        raise LookupError(NO_CHAMPION)
    previous = current.tags.get("previous_champion")
    if not previous:
        raise LookupError(
            f"version {current.version} (the champion) records no previous champion to roll back to"
        )
    _get_version(client, name, previous)  # fail clearly if it was deleted
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, str(current.version), "decision", "rolled_back")
    client.set_model_version_tag(name, str(current.version), "rolled_back_at", _now())
    client.update_model_version(name, str(current.version),
                                description=f"rolled back to version {previous} at {_now()}")
    return str(previous)
