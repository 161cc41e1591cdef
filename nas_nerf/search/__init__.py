"""`ns-nas-search`: an open NAS-NeRF architecture search (Optuna in place of the paper's GenSynth).

space.py    what is searched: depth / width ranges per field cell, width rules, params / FLOPs budget
targets.py  the S / XS / XXS SSIM targets (from the two boundary architectures, or given) and tier scores
train.py    one trial: a short `ns-train nas-nerf` run through nerfstudio's Trainer, evaluated at rungs
config.py   what a search is asked to do (scene, storage, budgets), and the settings a study is bound to
pruning.py  early stopping at evaluation rungs: successive halving of trials behind their tier's pace
records.py  the architectures finished trials evaluated, each tier's winner, the Pareto front
storage.py  the four Optuna studies in one storage: connecting, settings checks, reading the records
study.py    the search itself: targets, then each tier's sampling, reuse, bisection probes and trials
report.py   architecture JSONs, the Table-1-style table (Markdown, CSV), the Pareto plot, the summary
cli.py      the command line
"""

from nerfstudio_mobile.common.cli import UsageError


class SearchError(UsageError, ValueError):
    """A problem with what the user asked for (ranges, budget, targets, storage); shown without a traceback."""
