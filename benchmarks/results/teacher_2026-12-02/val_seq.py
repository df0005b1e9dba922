"""val.py with the flow median replaced by a sequence of medians: MEDIANS env = 'd4,a4' (d: over displacements, a: absolute)."""
import sys, os, runpy, torch
sys.path.insert(0, sys.argv[1])
import coat_model.model.coat as coatmod
from coat_model.train.pairs import identity_flow
orig = coatmod.guided_median
seq = [(s[0], int(s[1:])) for s in os.environ["MEDIANS"].split(",")]
def seq_median(flow, guide, radius, sigma, voters=None):
    ident = identity_flow(flow.shape[-1]).to(flow)
    for kind, r in seq:
        flow = orig(flow - ident, guide, r, sigma, voters) + ident if kind == "d" else orig(flow, guide, r, sigma, voters)
    return flow
coatmod.guided_median = seq_median
runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "val.py"), run_name="__main__")
