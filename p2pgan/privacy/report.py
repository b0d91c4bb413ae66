"""The Privacy section of a harness report: per site epsilon, delta, sigma, C, q, steps, and the audit's figures.

Pure functions over metrics records and audit JSON (no torch): :func:`privacy_summary` for report.json,
:func:`privacy_markdown` for report.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: what a site without DP says (the same words as its log: p2pgan.privacy.site.NO_PRIVACY)
NONE_LINE = ("no formal privacy: neighbours receive this site's discriminator every step, and its step-to-step "
             "change is close to a minibatch gradient of this site's private data")


def privacy_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One site's privacy from its metrics: the plan of its last start and the last epsilon it recorded."""
    starts = [r for r in records if r.get("type") == "start"]
    plan = dict((starts[-1].get("privacy") or {}) if starts else {})
    if plan.get("mode") != "dp":
        return {"mode": "off", "notice": NONE_LINE}
    spent = next((r for r in reversed(records) if r.get("epsilon") is not None), None)
    out = {"mode": "dp", "epsilon": None, "epsilon_rdp": None, "epsilon_budget": plan.get("target_epsilon"),
           "delta": plan.get("delta"), "sigma": plan.get("sigma"), "clip": plan.get("clip"), "q": plan.get("q"),
           "dp_steps": 0, "planned_steps": plan.get("planned_mechanisms"), "n": plan.get("n"),
           "seed": starts[-1].get("seed_source") if starts else None}
    if spent is not None:
        out.update({k: spent.get(k) for k in ("epsilon", "epsilon_rdp", "dp_steps")})
    return out


def privacy_statement(sites: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One sentence for a whole report from each site's :func:`privacy_summary`: the budget each DP site's
    accountant reports, or that there is no formal privacy."""
    dp = {name: s for name, s in sorted(sites.items()) if s.get("mode") == "dp"}
    if not dp:
        return {"statement": NONE_LINE[0].upper() + NONE_LINE[1:] + "."}
    parts = [f"{name}: epsilon {_f(s.get('epsilon'), '.4g')} of {_f(s.get('epsilon_budget'), '.4g')} at delta "
             f"{_f(s.get('delta'), 'g')} after {_f(s.get('dp_steps'))} private steps" for name, s in dp.items()]
    rest = "" if len(dp) == len(sites) else " Sites without differential privacy have no formal privacy."
    return {"statement": "Differential privacy per site (its own accountant): " + "; ".join(parts) + "." + rest}


def _f(value: Any, spec: str = ".3g") -> str:
    return "-" if value is None else (format(value, spec) if isinstance(value, (int, float)) else str(value))


def privacy_markdown(report: Mapping[str, Any]) -> list[str]:
    """The ``## Privacy`` lines of report.md (empty when the report has no privacy figures)."""
    peers = report.get("peers") or {}
    sites = {name: p["privacy"] for name, p in peers.items() if p.get("privacy")}
    if not sites:
        return []
    lines = ["## Privacy", "", privacy_statement(sites)["statement"], ""]
    off = [name for name, s in sites.items() if s["mode"] != "dp"]
    if off:
        lines += [f"**{', '.join(off)}: {NONE_LINE}.**", ""]
    dp = {name: s for name, s in sites.items() if s["mode"] == "dp"}
    if dp:
        lines += ["| site | epsilon (PLD) | epsilon (RDP check) | budget | delta | sigma | C | q | private steps |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, s in dp.items():
            lines.append(f"| {name} | {_f(s['epsilon'], '.4g')} | {_f(s['epsilon_rdp'], '.4g')} | "
                         f"{_f(s['epsilon_budget'])} | {_f(s['delta'], 'g')} | {_f(s['sigma'], '.4g')} | "
                         f"{_f(s['clip'], 'g')} | {_f(s['q'], '.4g')} | {_f(s['dp_steps'])} |")
        lines += ["", "Each site's (epsilon, delta) is its own, per example of its data, against any coalition of "
                  "members: Poisson-sampled Gaussian steps composed by Google's dp-accounting (PLD; RDP as a "
                  "cross-check).", ""]
    audits = report.get("privacy_audit") or {}
    if audits:
        lines += ["### Audit (a curious neighbour's attacks)", "",
                  "| site | attack | AUC | TPR at 1% FPR | TPR at 0.1% FPR | members | non-members |",
                  "|---|---|---|---|---|---|---|"]
        for name, a in audits.items():
            for attack, r in (a.get("attacks") or {}).items():
                if "auc_ci" not in r:  # the canary test has its own line below
                    continue
                lines.append(f"| {name} | {attack} | {_f(r['auc'])} [{_f(r['auc_ci'][0])}, {_f(r['auc_ci'][1])}] | "
                             f"{_f(r['tpr_at_1pct_fpr'])} | {_f(r['tpr_at_0p1pct_fpr'])} | {r['members']} | "
                             f"{r['non_members']} |")
        lines.append("")
        for name, a in audits.items():
            bound = f", so no attack's AUC may exceed {_f(a['auc_bound'])}" if a.get("auc_bound") else ""
            lines.append(f"- {name}: claimed epsilon {_f(a.get('epsilon_claimed'), '.4g')}{bound}; empirical lower "
                         f"bound (canary, Clopper-Pearson 95%) {_f(a.get('epsilon_lower'), '.4g')}")
        lines.append("")
    return lines
