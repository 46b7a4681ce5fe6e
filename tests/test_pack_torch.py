"""The packed sequences on the GPU side: loss equality in a packed row, and the PyTorch reader.

A tiny causal transformer with random weights runs on CPU: the loss of every item inside a
packed row (position ids restarting per item, a block-diagonal causal mask from seq_lens) must
equal its loss alone, and a wrong mask must not."""
from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'tcm-corpus[train]'); the test extra installs it")
pytest.importorskip("tokenizers", reason="the pack stage needs the tokenizers package (test extra)")

from pack_fixtures import corpus_rows, make_tokenizer_folder, write_corpus  # noqa: E402
from schemas.dataset import StageManifest  # noqa: E402
from transforms.engines.local import LocalEngine  # noqa: E402
from transforms.pack.check import TinyCausalLM, packed_vs_alone  # noqa: E402
from transforms.pack.reader import PackedDataset, block_causal_mask, collate_packed  # noqa: E402
from transforms.pack.stage import run_pack  # noqa: E402
from transforms.pack.tokenizer import PackTokenizer  # noqa: E402

SEQ_LEN = 1024


@pytest.fixture(scope="module")
def packed_dir(shared_data, tmp_path_factory) -> Path:
    tokenizer = make_tokenizer_folder(shared_data, tmp_path_factory.mktemp("tokenizer"), vocab_size=1500)
    corpus = write_corpus(corpus_rows(shared_data, texts=160, chats=60), tmp_path_factory.mktemp("corpus"), shards=3)
    params = {"tokenizer": str(tokenizer), "seq_len": SEQ_LEN, "template": "tokenizer", "packing": "best_fit", "window": 40,
              "overflow": {"text": "split", "chat": "reject"}, "pad_to_multiple_of": None, "eos_token": None, "pad_token": None,
              "outputs": [], "row_group_rows": 4}
    out = tmp_path_factory.mktemp("packed") / "packed"
    run_pack([corpus], out, params, StageManifest(stage="pack"), LocalEngine(1))
    return out


@pytest.fixture(scope="module")
def model(packed_dir) -> TinyCausalLM:
    torch.manual_seed(0)
    vocab = PackTokenizer(Path(PackedDataset(packed_dir).manifest["tokenizer"]["path"])).vocab_size
    return TinyCausalLM(vocab, dim=32, heads=2, layers=2, max_positions=SEQ_LEN).eval()


def test_loss_of_each_item_in_a_packed_row_equals_its_loss_alone(packed_dir, model):
    dataset = PackedDataset(packed_dir)
    rows = [item for item, _ in zip(dataset, range(2))]
    assert all(len(row["seq_lens"]) > 1 for row in rows)
    for row in rows:
        diff = packed_vs_alone(model, row["input_ids"], row["labels"], row["position_ids"], row["seq_lens"].tolist(), "mask")
        assert diff < 1e-5
        # The whole row's loss is the sum of its items' losses: no term reaches across items.
        cu = row["cu_seqlens"]
        assert row["labels"][cu[:-1].long()].eq(-100).all()


def test_a_wrong_mask_is_caught(packed_dir, model):
    """Plain causal attention over the packed row lets items see each other: the check fails."""
    row = next(iter(PackedDataset(packed_dir)))
    diff = packed_vs_alone(model, row["input_ids"], row["labels"], row["position_ids"], row["seq_lens"].tolist(), "causal")
    assert diff > 1e-3


def test_block_causal_mask():
    mask = block_causal_mask(torch.tensor([0, 2, 5, 6], dtype=torch.int32))
    expected = torch.tensor(
        [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool
    )
    assert torch.equal(mask, expected)


def test_reader_splits_ranks_and_workers_without_overlap(packed_dir):
    import pyarrow.parquet as pq

    total = pq.read_table(packed_dir / "sequences").num_rows
    assert total >= 12
    seen = []
    for rank in range(2):
        dataset = PackedDataset(packed_dir, batch_size=2, rank=rank, world_size=2)
        batches = list(dataset.loader(num_workers=2))
        indices = [int(i) for b in batches for i in b["index"]]
        assert indices == list(range(len(dataset)))  # the rank's stream, in order, through two workers
        assert len(dataset) == total // 2
        first = batches[0]
        assert first["input_ids"].shape == (1, 2 * SEQ_LEN) and first["cu_seqlens"][-1] == 2 * SEQ_LEN
        seen += [(rank, i) for i in indices]
    # Global sequence i went to rank i % 2, once.
    assert sorted(i * 2 + r for r, i in seen) == list(range(2 * (total // 2)))


def test_reader_resumes_at_the_exact_sequence(packed_dir):
    reference = PackedDataset(packed_dir, batch_size=2)
    everything = [b["input_ids"] for b in reference.loader(num_workers=2)]
    dataset = PackedDataset(packed_dir, batch_size=2)
    loader = dataset.loader(num_workers=2)
    taken = []
    for batch in loader:
        taken.append(batch["input_ids"])
        if len(taken) == 3:
            break
    state = dataset.state_dict()
    assert state["consumed"] == 6
    resumed = PackedDataset(packed_dir, batch_size=2)
    resumed.load_state_dict(state)
    rest = [b["input_ids"] for b in resumed.loader(num_workers=2)]
    assert len(taken) + len(rest) == len(everything)
    assert all(torch.equal(a, b) for a, b in zip(taken + rest, everything))
    with pytest.raises(ValueError, match="does not match"):
        PackedDataset(packed_dir, rank=0, world_size=2).load_state_dict(state)


def test_collate_packed_merges_cu_seqlens(packed_dir):
    dataset = PackedDataset(packed_dir)
    items = [item for item, _ in zip(dataset, range(2))]
    batch = collate_packed(items)
    n0 = len(items[0]["input_ids"])
    assert batch["cu_seqlens"].tolist() == items[0]["cu_seqlens"].tolist() + (items[1]["cu_seqlens"][1:] + n0).tolist()
    assert batch["max_seqlen"] == max(i["max_seqlen"] for i in items)
