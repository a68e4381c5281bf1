"""The paper's token-level evidence (method.md §3, Table 2, Fig. 2) for any base model and teacher.

- :mod:`.divergence`: classify positions (unshifted / reranked / shifted), rank and entropy statistics, and how two
  teachers' departures from one base decode coincide;
- :mod:`.decoding`: greedy decoding of the base with the teacher on the same prefix and token interventions
  (oracle, entropy-gated, random control);
- :mod:`.calibration`: gated share of completion tokens against the entropy threshold τ;
- :mod:`.forks`: what the gate picks on scored rollouts (token kinds, positions, tokens both signs of advantage share);
- :mod:`.report`: :func:`run_analysis` end to end, with a table, JSON and PNG plots (``trl-reasonmaxxer analyze``).
"""

from .calibration import calibration_report, tau_curve
from .decoding import AdapterDisabled, guided_greedy, make_policy
from .divergence import change_agreement, classify_rank, summarize_divergence, token_rank
from .forks import fork_profile, token_kind
from .report import AnalysisConfig, format_table, run_analysis, save_report


__all__ = [
    "AdapterDisabled",
    "AnalysisConfig",
    "calibration_report",
    "change_agreement",
    "classify_rank",
    "fork_profile",
    "format_table",
    "guided_greedy",
    "make_policy",
    "run_analysis",
    "save_report",
    "summarize_divergence",
    "tau_curve",
    "token_kind",
    "token_rank",
]
