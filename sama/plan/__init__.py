"""``sama plan``: what a training run costs and where it fits, without loading any weights.

* :mod:`sama.plan.arch`: the config -> :class:`~sama.plan.arch.RunSpec` (model on the meta
  device, encoders, buckets);
* :mod:`sama.plan.costs`: tokens, FLOPs and activation memory per sample (formulas);
* :mod:`sama.plan.fit`: bytes per device per strategy;
* :mod:`sama.plan.planner`: the report (:func:`make_plan`); :mod:`sama.plan.cli`: the command.
"""

from sama.plan.arch import RunSpec, build_meta_model, describe_run, parameter_counts, wan21_config
from sama.plan.cli import load_fit_config, plan_main
from sama.plan.costs import Tokens, activation_bytes, bucket_tokens, flops
from sama.plan.planner import make_plan

__all__ = [
    "RunSpec",
    "Tokens",
    "activation_bytes",
    "bucket_tokens",
    "build_meta_model",
    "describe_run",
    "flops",
    "load_fit_config",
    "make_plan",
    "parameter_counts",
    "plan_main",
    "wan21_config",
]
