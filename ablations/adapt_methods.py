"""
Three more ways to adapt to new languages, between the paper's and keep_out (adapt.py), to see what
freezing and replay do on their own. Each adds the same new expert and trains on the same batches:

    dissimilar       the paper's, but the new expert copied from the LEAST similar expert
    new_only         only the new expert and its router row train (a gradient mask), with the router loss
    new_only_replay  new_only + a share of old-language text whose router loss keeps it on its own experts

    python ablations/adapt_methods.py --adapt be,sr --from out/dmoe.pt   # all six methods, one table
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import adapt  # noqa: E402

EXTRA = {
    "dissimilar": lambda new_expert, best, worst, cfg: new_expert("dissimilar", worst, adapt.moe_only),
    "new_only": lambda new_expert, best, worst, cfg: new_expert("new_only", best, adapt.new_expert_only),
    "new_only_replay": lambda new_expert, best, worst, cfg: new_expert("new_only_replay", best, adapt.new_expert_only,
                                                                      cfg["adapt_replay"]),
}
ALL = "similar,dissimilar,new_only,new_only_replay,keep_out,cpt"


def main(argv):
    """adapt.main with the three methods added, all six run unless --adapt_methods names some."""
    if not any(a.split("=")[0] == "--adapt_methods" for a in argv):
        argv = list(argv) + ["--adapt_methods", ALL]
    return adapt.main(argv, extra_methods=EXTRA)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:   # as adapt.py: the last checkpoint of every stage is kept
        raise SystemExit("\ninterrupted: run the same command again to resume from the last checkpoint")
