"""Fingerprint a data set and plan preprocessing, network and training for this machine."""

from medseg.plan.fingerprint import ChannelIntensity, Fingerprint, fingerprint_from_report
from medseg.plan.plan import ChannelNorm, Plan
from medseg.plan.planner import Machine, make_plan

__all__ = ["ChannelIntensity", "ChannelNorm", "Fingerprint", "Machine", "Plan", "fingerprint_from_report", "make_plan"]
