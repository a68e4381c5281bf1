"""The one figure helper every report draws with."""

from trl_reasonmaxxer.plotting import new_figure, save_figure


def test_saved_figure_is_a_png_in_a_folder_created_for_it(tmp_path):
    fig, ax = new_figure(3.0, 2.0)
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, str(tmp_path / "new" / "folder" / "line.png"))
    assert path.endswith("line.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert tuple(fig.get_size_inches()) == (3.0, 2.0)


def test_a_row_of_panels_shares_its_scale_when_asked(tmp_path):
    fig, (left, right) = new_figure(4.0, 2.0, ncols=2, sharey=True)
    left.plot([0, 1], [0, 10])
    right.plot([0, 1], [0, 1])
    assert len(fig.axes) == 2  # no stray axes under the panels
    assert right.get_ylim() == left.get_ylim()
    assert save_figure(fig, str(tmp_path / "row.png")).endswith("row.png")
