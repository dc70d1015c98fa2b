import json

import pytest
import torch

from refscale.data import PairCropDataset, Sample, discover, iter_full_images
from refscale.errors import InputError
from refscale.io.image import read_image, write_image
from tests.conftest import synthetic_image


def f(hr: torch.Tensor) -> torch.Tensor:
    """A pixelwise map from HR to a 'reference' that stays exact after 8-bit rounding."""
    return 1.0 - hr


def make_pair(folder, h, w, seed, hr_name="hr.png", ref_name="ref.png"):
    folder.mkdir(parents=True, exist_ok=True)
    hr = torch.round(synthetic_image(h, w, seed) * 255) / 255
    write_image(hr, folder / hr_name)
    write_image(f(hr), folder / ref_name)
    return hr


def make_oscd(root, cities, split):
    for i, c in enumerate(cities):
        make_pair(root / c, 24 + 2 * i, 30, i, hr_name="img2.png", ref_name="img1.png")
    (root / "split.json").write_text(json.dumps(split))


# --------------------------------------------------------------------------- discover


def test_discover_pair_folders(tmp_path):
    make_pair(tmp_path / "b", 16, 16, 1)
    make_pair(tmp_path / "a", 16, 16, 2)
    (tmp_path / "notes").mkdir()
    s = discover(tmp_path)
    assert [x.name for x in s] == ["a", "b"]
    assert s[0].hr == tmp_path / "a" / "hr.png" and s[0].ref == tmp_path / "a" / "ref.png"


def test_discover_oscd_with_split(tmp_path):
    make_oscd(tmp_path, ["paris", "rome", "oslo"], {"train": ["paris", "rome"], "test": ["oslo"], "source": "x"})
    test = discover(tmp_path, split="test")
    assert [x.name for x in test] == ["oslo"]
    assert test[0].hr.name == "img2.png" and test[0].ref.name == "img1.png"  # img2 is the new HR
    assert [x.name for x in discover(tmp_path, split="train")] == ["paris", "rome"]
    assert len(discover(tmp_path)) == 3
    with pytest.raises(InputError, match="not in"):
        discover(tmp_path, split="val")
    with pytest.raises(InputError, match="not in"):
        discover(tmp_path, split="source")


def test_discover_single_images_and_single_file(tmp_path):
    for i, n in enumerate(["b.png", "a.jpg"]):
        write_image(synthetic_image(8, 8, i), tmp_path / n)
    (tmp_path / "readme.txt").write_text("x")
    s = discover(tmp_path)
    assert [(x.name, x.ref) for x in s] == [("a", None), ("b", None)]
    assert discover(tmp_path / "b.png") == [Sample("b", tmp_path / "b.png", None)]
    with pytest.raises(InputError, match="split.json"):
        discover(tmp_path, split="test")


def test_discover_csv_manifest(tmp_path):
    make_pair(tmp_path / "x", 16, 16, 0)
    write_image(synthetic_image(8, 8), tmp_path / "single.png")
    m = tmp_path / "list.csv"
    m.write_text("hr,ref,name\nx/hr.png,x/ref.png,first\nsingle.png,,\n")
    s = discover(m)
    assert s == [Sample("first", tmp_path / "x" / "hr.png", tmp_path / "x" / "ref.png"), Sample("single", tmp_path / "single.png", None)]
    m.write_text("x/hr.png,x/missing.png\n")
    with pytest.raises(InputError, match="line 1"):
        discover(m)


def test_discover_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        discover(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        discover(tmp_path / "empty")
    (tmp_path / "empty.csv").write_text("hr,ref\n")
    with pytest.raises(InputError, match="no images"):
        discover(tmp_path / "empty.csv")


# --------------------------------------------------------------------------- crops


@pytest.mark.parametrize("both", [False, True])
def test_crops_are_colocated_and_identically_augmented(tmp_path, both):
    hr1 = make_pair(tmp_path / "one", 40, 48, 1)
    make_pair(tmp_path / "two", 36, 44, 2)
    ds = PairCropDataset(discover(tmp_path), patch_size=16, augment=True, both_directions=both, seed=3)
    assert len(ds) == (4 if both else 2)
    seen_transforms = set()
    for _ in range(12):
        for i in range(len(ds)):
            item = ds[i]
            assert set(item) == {"hr", "ref"}
            assert item["hr"].shape == item["ref"].shape == (3, 16, 16)
            assert item["hr"].dtype == torch.float32
            # ref = f(hr) pixelwise in the files: must hold after crop + augmentation
            assert torch.allclose(item["ref"], f(item["hr"]), atol=1e-6)
            if i == 0:  # which of the 8 dihedral transforms of some crop of hr1 is it?
                seen_transforms.add(_find_transform(hr1[0], item["hr"]))
    assert None not in seen_transforms and len(seen_transforms) >= 4  # augmentation really happens


def _find_transform(full, patch):
    p = patch.shape[-1]
    for t in range(8):
        cand = patch
        # undo: transpose, vflip, hflip in reverse order of application
        if t & 4:
            cand = cand.transpose(-1, -2)
        if t & 2:
            cand = cand.flip(-2)
        if t & 1:
            cand = cand.flip(-1)
        windows = full.unfold(1, p, 1).unfold(2, p, 1)  # [3, H-p+1, W-p+1, p, p]
        hit = ((windows - cand[:, None, None]).abs().amax(dim=(0, 3, 4)) < 1e-6).any()
        if hit:
            return t
    return None


def test_both_directions_swaps_roles(tmp_path):
    make_pair(tmp_path / "one", 20, 20, 1)
    ds = PairCropDataset(discover(tmp_path), patch_size=20, augment=False, both_directions=True)
    fwd, rev = ds[0], ds[1]
    assert torch.equal(fwd["hr"], rev["ref"]) and torch.equal(fwd["ref"], rev["hr"])


def test_crops_vary_and_are_reproducible(tmp_path):
    make_pair(tmp_path / "one", 40, 40, 1)
    a = PairCropDataset(discover(tmp_path), patch_size=8, seed=5, repeats=3)
    b = PairCropDataset(discover(tmp_path), patch_size=8, seed=5, repeats=3)
    assert len(a) == 3
    xs = [a[0]["hr"] for _ in range(4)]
    ys = [b[0]["hr"] for _ in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(xs, ys))
    assert not torch.equal(xs[0], xs[1])


def test_single_image_dataset_and_errors(tmp_path):
    write_image(synthetic_image(20, 24), tmp_path / "a.png")
    ds = PairCropDataset(discover(tmp_path), patch_size=16, both_directions=True)
    assert len(ds) == 1 and set(ds[0]) == {"hr"} and ds[0]["hr"].shape == (3, 16, 16)
    with pytest.raises(InputError, match="smaller"):
        PairCropDataset(discover(tmp_path), patch_size=32)
    with pytest.raises(InputError, match="multiple"):
        PairCropDataset(discover(tmp_path), patch_size=10, scale_multiple=4)


def test_dataloader_batches(tmp_path):
    make_pair(tmp_path / "one", 24, 24, 1)
    make_pair(tmp_path / "two", 24, 24, 2)
    dl = torch.utils.data.DataLoader(PairCropDataset(discover(tmp_path), 8, repeats=2), batch_size=4)
    batch = next(iter(dl))
    assert batch["hr"].shape == batch["ref"].shape == (4, 3, 8, 8)


# --------------------------------------------------------------------------- full images


def test_iter_full_images_mod_crops(tmp_path):
    make_oscd(tmp_path, ["a", "b"], {"train": ["a"], "test": ["b"]})
    out = list(iter_full_images(discover(tmp_path), multiple=4))
    assert [n for n, _, _ in out] == ["a", "b"]
    name, hr, ref = out[1]
    assert hr.shape == (1, 3, 24, 28)  # 26x30 cropped to multiples of 4
    assert torch.equal(hr, read_image(tmp_path / "b" / "img2.png")[..., :24, :28])
    assert torch.allclose(ref, f(hr), atol=1e-6)
    write_image(synthetic_image(9, 10), tmp_path / "single.png")
    ((n, hr, ref),) = iter_full_images(discover(tmp_path / "single.png"), multiple=2)
    assert hr.shape == (1, 3, 8, 10) and ref is None
