

def test_the_digest_is_of_the_bytes_trained_on(tmp_path, monkeypatch) -> None:
    """The file was read, then opened again to be hashed: one replaced in between (new
    data landing under the same name) was recorded in the lineage as the data trained on."""
    import hashlib

    import training.data as data

    path = tmp_path / "latest.csv"
    first = "a,target\n1,0\n2,1\n3,0\n4,1\n"
    path.write_text(first)
    opened = data._open

    def open_then_replace(location: str):
        handle = opened(location)
        landing = tmp_path / "landing.csv"  # new data lands under the name, whole
        landing.write_text("a,target\n9,1\n9,0\n9,1\n9,0\n9,1\n")
        landing.replace(path)
        return handle

    monkeypatch.setattr(data, "_open", open_then_replace)
    from training.schemas import DataSpec

    dataset = data.load_dataset(DataSpec(path=str(path), target="target"), "classification")
    assert dataset.digest == hashlib.sha256(first.encode()).hexdigest()
    assert dataset.features[:, 0].tolist() == [1, 2, 3, 4]
