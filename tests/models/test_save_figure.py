"""uhn.models.plotting.save_figure writes the format its suffix names, or refuses."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from uhn.models.plotting import save_figure  # noqa: E402

#: the first bytes of each format (its file signature)
MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF", ".jpg": b"\xff\xd8\xff", ".svg": b"<?xml"}


@pytest.fixture
def fig():
    f, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    yield f
    plt.close(f)


@pytest.mark.parametrize("suffix", sorted(MAGIC))
def test_bytes_match_the_suffix(tmp_path, fig, suffix):
    (path,) = save_figure(fig, tmp_path / f"f{suffix}")
    assert path.suffix == suffix
    assert path.read_bytes().startswith(MAGIC[suffix])


def test_no_suffix_means_png_and_pdf_beside_it(tmp_path, fig):
    paths = save_figure(fig, tmp_path / "f", pdf=True)
    assert [p.name for p in paths] == ["f.png", "f.pdf"]
    assert paths[0].read_bytes().startswith(MAGIC[".png"]) and paths[1].read_bytes().startswith(MAGIC[".pdf"])


def test_unknown_suffix_is_refused_and_nothing_written(tmp_path, fig):
    with pytest.raises(ValueError, match=r"unknown image suffix '\.bmpx'"):
        save_figure(fig, tmp_path / "f.bmpx")
    assert list(tmp_path.iterdir()) == []
