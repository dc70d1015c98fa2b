"""The file-level API under the CLI (refscale.files): jobs from folders and manifests, preflight,
encoding files and decoding a .rsc with the model it names."""
import pytest
import torch

from refscale import files, zoo
from refscale.errors import InputError, ModelError
from refscale.io.image import write_image
from test_pipeline import ToyRef, pair


@pytest.fixture
def scenes(tmp_path):
    """Two pair folders (hr.png + ref.png) and toy reference weights."""
    for i, name in enumerate(("alpha", "beta")):
        hr, ref = pair(24, 32, seed=i)
        (tmp_path / "pairs" / name).mkdir(parents=True)
        write_image(hr, tmp_path / "pairs" / name / "hr.png")
        write_image(ref, tmp_path / "pairs" / name / "ref.png")
    zoo.save_weights(ToyRef(), tmp_path / "toyref.safetensors")
    return tmp_path


def test_encode_folder_then_decode_by_the_recorded_model(scenes):
    model = zoo.load(str(scenes / "toyref.safetensors"))
    jobs = files.encode_jobs(scenes / "pairs", scenes / "out", model, lr_out=scenes / "lr")
    assert [j.name for j in jobs] == ["alpha", "beta"] and all(j.ref is not None for j in jobs)
    assert jobs[0].output == scenes / "out" / "alpha.rsc" and jobs[0].lr_output == scenes / "lr" / "alpha.png"
    files.preflight(jobs)
    results = [files.encode_file(j, model) for j in jobs]
    assert all(r["bytes"] == r["output"].stat().st_size and r["bpp"] > 0 for r in results)
    with pytest.raises(InputError, match="exists"):
        files.preflight(jobs)  # the outputs are there now
    # weights from a path are named after the file; decoding then names them too
    hr, packet, used = files.decode_file(scenes / "out" / "alpha.rsc", scenes / "pairs" / "alpha" / "ref.png",
                                         model=str(scenes / "toyref.safetensors"), seed=0)
    assert used.name == packet.model == "toyref" and hr.shape == (1, 3, 24, 32)
    again, _, _ = files.decode_file((scenes / "out" / "alpha.rsc").read_bytes(), scenes / "pairs" / "alpha" / "ref.png",
                                    model=used, seed=0)
    assert torch.equal(hr, again)
    # a catalogue model needs no name at decode time: the container says which one made it
    bic = zoo.load("bicubic-x2")
    job = files.encode_jobs(scenes / "pairs" / "beta" / "hr.png", scenes / "b.rsc", bic)[0]
    files.encode_file(job, bic)
    with pytest.warns(UserWarning, match="ref"):
        out, packet, used = files.decode_file(scenes / "b.rsc", scenes / "pairs" / "beta" / "ref.png")
    assert used.name == packet.model == "bicubic-x2" and out.shape == (1, 3, 24, 32)
    # a manifest of containers with their references decodes the same way
    (scenes / "list.csv").write_text("rsc,ref,name\nout/beta.rsc,pairs/beta/ref.png,b\n")
    jobs = files.decode_jobs(scenes / "list.csv", scenes / "rebuilt")
    assert [(j.name, j.output.name) for j in jobs] == [("b", "b.png")] and jobs[0].ref.name == "ref.png"


def test_clear_refusals(scenes):
    model = zoo.load(str(scenes / "toyref.safetensors"))
    (scenes / "alone").mkdir()
    hr, _ = pair(24, 32)
    write_image(hr, scenes / "alone" / "x.png")
    with pytest.raises(ModelError, match="needs a reference"):
        files.encode_jobs(scenes / "alone", scenes / "o", model)
    jobs = files.encode_jobs(scenes / "pairs", scenes / "pairs" / "alpha", model)
    jobs[0].output = jobs[0].input  # an output that is an input
    with pytest.raises(InputError, match="one of the inputs"):
        files.preflight(jobs)
    data = bytearray((scenes / "toyref.safetensors").read_bytes())
    (scenes / "rsc").mkdir()
    model_bytes = model.encode(hr, hr).to_bytes()
    (scenes / "rsc" / "s.rsc").write_bytes(model_bytes)
    (scenes / "toyref.safetensors").unlink()  # the recorded model is gone
    with pytest.raises(ModelError, match="cannot be loaded here"):
        files.decode_file(scenes / "rsc" / "s.rsc", hr)
    assert data  # (the weights existed before)
    with pytest.raises(InputError, match="no .rsc files"):
        files.decode_jobs(scenes / "alone", scenes / "o")


def test_a_failed_lr_write_leaves_no_container(scenes, monkeypatch):
    model = zoo.load(str(scenes / "toyref.safetensors"))
    job = files.encode_jobs(scenes / "pairs", scenes / "out", model, lr_out=scenes / "lr")[0]

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.raster, "write_lr", disk_full)
    with pytest.raises(OSError):
        files.encode_file(job, model)
    assert not job.output.exists() and not job.lr_output.exists()
