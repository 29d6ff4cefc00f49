"""Names from list files and folder scans never leave the dataset root; a bad list line is one clear error."""
import os

import pytest

from pipeline.datasets import datasets as D


def _touch(root, *rels):
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)


def _one_line_error(exc_info, *parts):
    msg = str(exc_info.value)
    assert "\n" not in msg
    for p in parts:
        assert p in msg, (p, msg)


def _own_notes(index):
    """The notes other than the count check against the official release (tiny trees always differ)."""
    return [n for n in index.notes if "the official release has" not in n]


def _hmdb(tmp_path, extra_line=None, split_name="brush_hair_test_split1.txt"):
    """A two-video HMDB51 root at tmp_path/hmdb; `extra_line` goes on line 3 of the split file."""
    root = tmp_path / "hmdb"
    _touch(root, "brush_hair/a.avi", "brush_hair/b.avi")
    lines = ["a.avi 1", "b.avi 2"] + ([extra_line] if extra_line is not None else [])
    _write(root / "testTrainMulti_7030_splits" / split_name, "\n".join(lines) + "\n")
    return root


def _ucf101(tmp_path, class_lines=None, train_extra=None):
    """A three-class UCF101 root at tmp_path/ucf; class_lines replace classInd.txt, train_extra ends trainlist01."""
    root = tmp_path / "ucf"
    classes = ["Archery", "Biking", "Diving"]
    rels = [f"{c}/v_{c}_g{g:02d}_c01.avi" for c in classes for g in (1, 2)]
    _touch(root, *rels)
    lists = root / "ucfTrainTestlist"
    class_lines = class_lines or [f"{i} {c}" for i, c in enumerate(classes, 1)]
    _write(lists / "classInd.txt", "\r\n".join(class_lines) + "\r\n")
    train = [f"{r} {i // 2 + 1}" for i, r in enumerate(rels) if "_g01_" in r]
    train += [train_extra] if train_extra is not None else []
    _write(lists / "trainlist01.txt", "\n".join(train) + "\n")
    _write(lists / "testlist01.txt", "\n".join(r for r in rels if "_g02_" in r) + "\n")
    return root


# ---- HMDB51 ---------------------------------------------------------------------------------

def test_hmdb51_well_formed_still_loads(tmp_path):
    index = D.load("hmdb51", _hmdb(tmp_path))
    assert [v.path for v in index.videos] == ["brush_hair/a.avi", "brush_hair/b.avi"]
    assert list(index.splits["official1"]) == [0, 2]


def test_hmdb51_dotdot_line_is_an_error_not_a_video_outside(tmp_path):
    _touch(tmp_path, "x.avi")  # hmdb/brush_hair/../../x.avi exists: before the fix it was indexed
    with pytest.raises(D.DatasetError) as e:
        D.load("hmdb51", _hmdb(tmp_path, "../../x.avi 1"))
    _one_line_error(e, "brush_hair_test_split1.txt:3", "'../../x.avi'", "'..'", "allowed: a relative path")


def test_hmdb51_dotdot_class_from_the_file_name(tmp_path):
    root = _hmdb(tmp_path)
    _write(root / "testTrainMulti_7030_splits" / ".._test_split1.txt", "x.avi 1\n")
    _touch(tmp_path, "x.avi")  # hmdb/../x.avi: before the fix, class '..' held this video
    with pytest.raises(D.DatasetError) as e:
        D.load("hmdb51", root)
    _one_line_error(e, ".._test_split1.txt", "'..'", "allowed:")


@pytest.mark.parametrize("line, says", [
    ("{abs} 1", "absolute"),
    ("C:\\x.avi 1", "absolute"),
    ("\\\\server\\share\\x.avi 1", "absolute"),
    ("..\\..\\x.avi 1", "'..'"),
    ("a\x00.avi 1", "NUL"),
])
def test_hmdb51_absolute_and_odd_names_are_errors(tmp_path, line, says):
    _touch(tmp_path, "x.avi")
    line = line.format(abs=tmp_path / "x.avi")
    with pytest.raises(D.DatasetError) as e:
        D.load("hmdb51", _hmdb(tmp_path, line))
    _one_line_error(e, "brush_hair_test_split1.txt:3", says)


@pytest.mark.parametrize("line, says", [
    ("a.avi 7", "'7'"),
    ("a.avi", "'a.avi'"),
    ("a.avi x", "'x'"),
])
def test_hmdb51_bad_flag_or_missing_field_names_file_and_line(tmp_path, line, says):
    with pytest.raises(D.DatasetError) as e:
        D.load("hmdb51", _hmdb(tmp_path, line))
    _one_line_error(e, "brush_hair_test_split1.txt:3", says, "0 (unused), 1 (train) or 2 (test)")


def test_hmdb51_video_linked_outside_the_root_is_skipped_with_a_note(tmp_path):
    root = _hmdb(tmp_path, "c.avi 1")
    _touch(tmp_path, "outside/secret.avi")
    (root / "brush_hair" / "c.avi").symlink_to(tmp_path / "outside" / "secret.avi")
    index = D.load("hmdb51", root)
    assert [v.path for v in index.videos] == ["brush_hair/a.avi", "brush_hair/b.avi"]
    assert any("'c.avi'" in n and "outside the dataset root" in n for n in index.notes), index.notes


def test_hmdb51_class_folder_linked_outside_is_skipped_with_one_note(tmp_path):
    root = _hmdb(tmp_path)
    _touch(tmp_path, "outside/a.avi")
    for k in (1, 2):
        _write(root / "testTrainMulti_7030_splits" / f"evil_test_split{k}.txt", "a.avi 1\n")
    (root / "evil").symlink_to(tmp_path / "outside")
    index = D.load("hmdb51", root)
    assert [v.path for v in index.videos] == ["brush_hair/a.avi", "brush_hair/b.avi"]
    assert index.classes == ("brush_hair", "evil")  # the class stays, with no videos
    hits = [n for n in index.notes if "'evil'" in n]
    assert len(hits) == 1 and "outside the dataset root" in hits[0], index.notes


# ---- UCF101 ---------------------------------------------------------------------------------

def test_ucf101_well_formed_still_loads(tmp_path):
    index = D.load("ucf101", _ucf101(tmp_path))
    assert index.classes == ("Archery", "Biking", "Diving") and len(index.videos) == 6
    assert list(index.splits["official1"]) == [0, 2] * 3 and not _own_notes(index)


@pytest.mark.parametrize("name, says", [("../elsewhere", "'..'"), ("{abs}", "absolute")])
def test_ucf101_class_outside_the_root_is_an_error(tmp_path, name, says):
    _touch(tmp_path, "elsewhere/v_Elsewhere_g01_c01.avi")  # before the fix this was scanned and indexed
    name = name.format(abs=tmp_path / "elsewhere")
    root = _ucf101(tmp_path, ["1 Archery", "2 Biking", f"3 {name}"])
    with pytest.raises(D.DatasetError) as e:
        D.load("ucf101", root)
    _one_line_error(e, "classInd.txt:3", repr(name), says)


@pytest.mark.parametrize("line, says", [
    ("1", "'1'"),
    ("x Foo", "'x'"),
    ("3 Diving Extra", "'3 Diving Extra'"),
    ("4 Diving", "4"),
])
def test_ucf101_malformed_classind_names_file_and_line(tmp_path, line, says):
    root = _ucf101(tmp_path, ["1 Archery", "2 Biking", line])
    with pytest.raises(D.DatasetError) as e:
        D.load("ucf101", root)
    _one_line_error(e, "classInd.txt:3", says, "allowed:")


@pytest.mark.parametrize("line, says", [
    ("../elsewhere/v_X_g01_c01.avi 1", "'..'"),
    ("{abs} 1", "absolute"),
    ("", None),  # blank lines are skipped, as before
])
def test_ucf101_split_lines_outside_the_root_are_errors(tmp_path, line, says):
    _touch(tmp_path, "elsewhere/v_X_g01_c01.avi")
    line = line.format(abs=tmp_path / "elsewhere" / "v_X_g01_c01.avi")
    root = _ucf101(tmp_path, train_extra=line)
    if says is None:
        assert not _own_notes(D.load("ucf101", root))
        return
    with pytest.raises(D.DatasetError) as e:
        D.load("ucf101", root)
    _one_line_error(e, "trainlist01.txt:4", says)


def test_ucf101_class_folder_linked_outside_is_skipped_with_a_note(tmp_path):
    root = _ucf101(tmp_path)
    _touch(tmp_path, "outside/v_Diving_g09_c01.avi")
    for f in (root / "Diving").iterdir():
        f.unlink()
    (root / "Diving").rmdir()
    (root / "Diving").symlink_to(tmp_path / "outside")
    index = D.load("ucf101", root)
    assert index.classes == ("Archery", "Biking", "Diving")  # the labels keep their numbers
    assert not any(v.path.startswith("Diving/") for v in index.videos)
    assert any("classInd.txt:3" in n and "'Diving'" in n and "outside the dataset root" in n for n in index.notes)


def test_ucf101_video_linked_outside_is_skipped_with_a_note(tmp_path):
    root = _ucf101(tmp_path, train_extra="Biking/v_Biking_g03_c01.avi 2")
    _touch(tmp_path, "outside/secret.avi")
    (root / "Biking" / "v_Biking_g03_c01.avi").symlink_to(tmp_path / "outside" / "secret.avi")
    index = D.load("ucf101", root)
    assert "Biking/v_Biking_g03_c01.avi" not in [v.path for v in index.videos]
    assert any("'Biking/v_Biking_g03_c01.avi'" in n for n in index.notes), index.notes
    # the split file naming it is not an error: the entry has no video, as for a missing file
    assert any("1 entries of the split files have no video" in n for n in index.notes), index.notes


# ---- class-folder scans (ucf50, folder, synthetic) ------------------------------------------

def _folder(tmp_path):
    root = tmp_path / "data"
    _touch(root, "run/a.mp4", "jump/b.mp4")
    _touch(tmp_path, "outside/x.mp4", "outside/y.mp4")
    return root


def test_scan_skips_a_class_folder_linked_outside_with_one_note(tmp_path):
    root = _folder(tmp_path)
    (root / "evil").symlink_to(tmp_path / "outside")
    index = D.load("folder", root)
    assert index.classes == ("jump", "run") and len(index.videos) == 2
    hits = [n for n in index.notes if "'evil'" in n]
    assert len(hits) == 1 and "outside the dataset root" in hits[0], index.notes


def test_scan_skips_a_video_linked_outside_with_a_note(tmp_path):
    root = _folder(tmp_path)
    (root / "run" / "c.mp4").symlink_to(tmp_path / "outside" / "x.mp4")
    (root / "run" / "rel.mp4").symlink_to(os.path.join("..", "..", "outside", "y.mp4"))
    index = D.load("folder", root)
    assert [v.path for v in index.videos] == ["jump/b.mp4", "run/a.mp4"]
    assert any("'run/c.mp4'" in n for n in index.notes) and any("'run/rel.mp4'" in n for n in index.notes)


def test_scan_keeps_links_inside_the_root_and_dangling_links(tmp_path):
    root = _folder(tmp_path)
    (root / "run" / "alias.mp4").symlink_to(root / "jump" / "b.mp4")         # inside: kept
    (root / "run" / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")        # dangling: kept, extraction fails it
    (root / "run" / "gone2.mp4").symlink_to("missing.mp4")                   # dangling inside
    (root / "run" / "loop.mp4").symlink_to("loop.mp4")                       # a loop is dangling too
    index = D.load("folder", root)
    assert [v.path for v in index.videos] == ["jump/b.mp4", "run/a.mp4", "run/alias.mp4", "run/gone.mp4",
                                              "run/gone2.mp4", "run/loop.mp4"]


def test_ucf50_scan_skips_links_outside(tmp_path):
    root = tmp_path / "ucf50"
    _touch(root, "Biking/v_Biking_g01_c01.avi", "Biking/v_Biking_g02_c01.avi")
    _touch(tmp_path, "outside/v_Evil_g01_c01.avi")
    (root / "Evil").symlink_to(tmp_path / "outside")
    index = D.load("ucf50", root)
    assert index.classes == ("Biking",) and any("'Evil'" in n for n in index.notes)


# ---- list files -----------------------------------------------------------------------------

def test_list_file_not_utf8_names_file_and_line(tmp_path):
    root = _hmdb(tmp_path)
    _write(root / "testTrainMulti_7030_splits" / "brush_hair_test_split2.txt", b"a.avi 1\nb\xff.avi 2\n")
    with pytest.raises(D.DatasetError) as e:
        D.load("hmdb51", root)
    _one_line_error(e, "brush_hair_test_split2.txt:2", "UTF-8")


def test_list_file_bom_crlf_and_blank_lines(tmp_path):
    root = _ucf101(tmp_path)
    _write(root / "ucfTrainTestlist" / "classInd.txt", "\ufeff1 Archery\r\n\r\n2 Biking\r3 Diving\r\n")
    index = D.load("ucf101", root)
    assert index.classes == ("Archery", "Biking", "Diving")


def test_ucf101_missing_classind_is_one_clear_error(tmp_path):
    root = _ucf101(tmp_path)
    (root / "ucfTrainTestlist" / "classInd.txt").unlink()
    with pytest.raises(D.DatasetError) as e:
        D.load("ucf101", root)
    _one_line_error(e, "classInd.txt")


# ---- safe_rel itself ------------------------------------------------------------------------

@pytest.mark.parametrize("name, out", [
    ("a.avi", "a.avi"), ("C/./x.avi", "C/x.avi"), ("C//x.avi", "C/x.avi"), ("C/x (1)!.avi", "C/x (1)!.avi"),
])
def test_safe_rel_normalises(tmp_path, name, out):
    assert D.safe_rel(tmp_path, name, "f.txt:1") == out


@pytest.mark.parametrize("name", ["", ".", "./", "/etc/passwd", "C:x", "c:\\x", "\\x", "a/../b", "..", "a\x00b"])
def test_safe_rel_rejects(tmp_path, name):
    with pytest.raises(D.DatasetError, match=r"^f\.txt:7: .*allowed: a relative path inside the dataset root"):
        D.safe_rel(tmp_path, name, "f.txt:7")
