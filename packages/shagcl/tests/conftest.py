"""pytest setup: the tests folder on sys.path (helpers in shagcl_testlib.py and shagcl_dist_helpers.py), and the
official-layout data that the shipped-config runs and the real-size training-state checks share."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

DATASETS = {"vg150": (150, 50), "gqa200": (200, 100)}  # object / predicate classes without background


@pytest.fixture(scope="session")
def official(tmp_path_factory):
    """``official(dataset)`` for ``vg150`` or ``gqa200``, made once per session: the annotation files and images with
    the full class counts, a GloVe text file, a (random) torchvision detector state dict, and the PredCls/SGCls and
    SGDet feature caches written from it by ``shagcl extract`` as the README prescribes. Returns ``(root, glove,
    detector, caches)`` with ``caches`` keyed by protocol."""
    from shagcl.cli import main
    from shagcl.testing import write_detector_checkpoint, write_glove, write_gqa200, write_vg150

    made = {}

    def make(dataset: str):
        if dataset in made:
            return made[dataset]
        root = tmp_path_factory.mktemp(dataset)
        n_obj, n_pred = DATASETS[dataset]
        kw = dict(n_obj_classes=n_obj, n_predicates=n_pred, max_obj=3, with_images=True)
        if dataset == "vg150":
            write_vg150(root, n_images=7, n_test=2, **kw)
        else:
            write_gqa200(root, n_train=5, n_test=2, **kw)
        glove = write_glove(root / "glove" / "glove.6B.200d.txt", [f"object{i}" for i in range(1, n_obj + 1)], 200)
        detector = write_detector_checkpoint(root / "detector.pth", n_obj + 1)
        base = ["extract", "--dataset", dataset, "--data_root", str(root), "--checkpoint", str(detector)]
        base += ["--min_size", "64", "--max_size", "96", "--num_val_images", "1"]
        caches = {"predcls": root / "features_predcls.h5", "sgdet": root / "features_sgdet.h5"}
        caches["sgcls"] = caches["predcls"]
        main(args=[*base, "--protocol", "predcls", "--output", str(caches["predcls"])])
        # a random detector scores every class near 1/(classes + 1): no threshold, so that detections exist
        main(args=[*base, "--protocol", "sgdet", "--union_stage", "fc7", "--score_thresh", "0",
                   "--detections_per_img", "4", "--output", str(caches["sgdet"])])  # fmt: skip
        made[dataset] = (root, glove, detector, caches)
        return made[dataset]

    return make
