import pytest

from lab import launch

from conftest import run_training
import torch
import torch.nn.functional as F

import sample
from model import ModelConfig, Transformer
from tokenizer import make_encoding as get_tokenizer
from sample import ar_generate, diffusion_generate, encode_prompt, num_transfer_tokens

MASK = 100


def tiny_model(causal, seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(n_vocab=100, block_size=48, n_layer=2, n_head=2, n_embd=32, causal=causal)).eval()


@pytest.mark.parametrize("prompt_len,new", [(1, 10), (5, 30), (20, 28)])
def test_kv_cached_greedy_equals_uncached(prompt_len, new):
    model = tiny_model(True)
    prompt = torch.randint(0, 100, (2, prompt_len))
    cached = ar_generate(model, prompt, new, temperature=0)
    uncached = ar_generate(model, prompt, new, temperature=0, use_cache=False)
    assert cached.shape == (2, prompt_len + new)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, :prompt_len], prompt)


def test_seeded_sampling_reproduces_and_top_k_restricts():
    model = tiny_model(True)
    prompt = torch.randint(0, 100, (1, 4))
    draw = lambda seed, **kw: ar_generate(model, prompt, 20, 1.0, generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))
    assert torch.equal(draw(1, use_cache=False), draw(1))  # the cache changes nothing but speed
    # top_k=1 is greedy whatever the seed
    assert torch.equal(draw(5, top_k=1), ar_generate(model, prompt, 20, temperature=0))


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = {sample.sample_next(logits, 1.0, top_p=0.75, generator=torch.Generator().manual_seed(s)).item()
            for s in range(200)}
    assert seen == {0, 1}


def test_generation_past_the_context_slides():
    model = tiny_model(True)
    out = ar_generate(model, torch.randint(0, 100, (1, 3)), 100, temperature=0)
    assert out.shape == (1, 103) and (out < 100).all()


def test_schedule_spreads_the_count_remainder_first():
    masked = torch.zeros(3, 10, dtype=torch.bool)
    masked[0, :10] = True
    masked[1, :7] = True
    masked[2, :2] = True
    schedule = num_transfer_tokens(masked, 4)
    assert schedule.tolist() == [[3, 3, 2, 2], [2, 2, 2, 1], [1, 1, 0, 0]]


def count_commits(model, x, prompt_length, steps, **kw):
    trail = [x]
    out = diffusion_generate(model, x, prompt_length, steps, on_step=lambda x, s: trail.append(x.clone()), **kw)
    commits = [((a == MASK) & (b != MASK)).sum(1) for a, b in zip(trail, trail[1:])]
    return out, torch.stack(commits, 1), trail


def test_one_token_per_step_when_steps_equal_length_and_known_tokens_fixed():
    model = tiny_model(False)
    prompt = torch.randint(0, 100, (2, 6))
    x = torch.cat([prompt, torch.full((2, 16), MASK)], 1)
    out, commits, trail = count_commits(model, x, 6, 16)
    assert (commits == 1).all() and commits.sum(1).tolist() == [16, 16]
    assert (out != MASK).all()
    for state in trail:
        assert torch.equal(state[:, :6], prompt)
    # once committed, a token never changes
    for a, b in zip(trail, trail[1:]):
        assert torch.equal(a[a != MASK], b[a != MASK])


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_infilling_with_blocks_rows_with_different_masks(remasking):
    model = tiny_model(False)
    x = torch.randint(0, 100, (3, 40))
    x[0, 3:9] = MASK
    x[1, 10] = MASK
    x[2, 20:24] = MASK
    x[:, 24:] = MASK  # 16 generated tokens after a 24-token prompt with holes
    known = x != MASK
    out, commits, _ = count_commits(model, x, 24, 8, block_length=8, temperature=0.7, remasking=remasking,
                                    generator=torch.Generator().manual_seed(0))
    assert (out != MASK).all()
    assert torch.equal(out[known], x[known])
    assert commits.sum(1).tolist() == [22, 17, 20]  # every row its own count
    # blocks: the second half of the steps fills only the second block
    assert (commits[:, 4:].sum(1) == 8).all()


def test_temperature_zero_is_deterministic_and_seed_reproduces():
    model = tiny_model(False)
    x = torch.cat([torch.randint(0, 100, (1, 4)), torch.full((1, 20), MASK)], 1)
    a = diffusion_generate(model, x, 4, 10)
    b = diffusion_generate(model, x, 4, 10)
    assert torch.equal(a, b)
    s = lambda seed: diffusion_generate(model, x, 4, 10, temperature=1.0, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(s(3), s(3)) and not torch.equal(s(3), s(4))


def llada_reference(model, prompt, steps, gen_length, block_length):
    """LLaDA's published generate() at temperature 0 with low_confidence remasking, written from its
    description: per block, per step, argmax candidates, confidence = softmax prob, commit the top-k."""
    x = torch.full((1, prompt.shape[1] + gen_length), MASK)
    x[:, :prompt.shape[1]] = prompt
    steps_per_block = steps // (gen_length // block_length)
    for b in range(gen_length // block_length):
        lo, hi = prompt.shape[1] + b * block_length, prompt.shape[1] + (b + 1) * block_length
        n_masked = int((x[0, lo:hi] == MASK).sum())
        counts = [n_masked // steps_per_block + (1 if i < n_masked % steps_per_block else 0)
                  for i in range(steps_per_block)]
        for i in range(steps_per_block):
            logits = model(x)
            x0 = logits.argmax(-1)
            p = F.softmax(logits, dim=-1).gather(-1, x0[..., None])[..., 0]
            p[:, hi:] = -float("inf")
            conf = torch.where(x == MASK, p, torch.tensor(-float("inf")))
            idx = torch.topk(conf[0], counts[i]).indices
            x[0, idx] = x0[0, idx]
    return x


@pytest.mark.parametrize("steps,gen_length,block_length", [(16, 32, 32), (16, 32, 8), (12, 24, 24)])
def test_matches_llada_generate_at_temperature_zero(steps, gen_length, block_length):
    model = tiny_model(False, seed=3)
    prompt = torch.randint(0, 100, (1, 8))
    x = torch.cat([prompt, torch.full((1, gen_length), MASK)], 1)
    ours = diffusion_generate(model, x, 8, steps, block_length)
    assert torch.equal(ours, llada_reference(model, prompt, steps, gen_length, block_length))


def test_prompt_errors():
    ar, df = tiny_model(True), tiny_model(False)
    with pytest.raises(ValueError, match="context"):
        ar_generate(ar, torch.zeros(1, 49, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="context"):
        diffusion_generate(df, torch.full((1, 60), MASK), 10, 10)
    with pytest.raises(ValueError, match="multiple"):
        diffusion_generate(df, torch.full((1, 30), MASK), 10, 10, block_length=7)


def test_prompt_notation():
    enc = get_tokenizer("bytes")
    assert encode_prompt(enc, "ab[MASK]c[MASK*3]", 256) == [97, 98, 256, 99, 256, 256, 256]
    assert sample.render(enc, [97, 256, 10, 98], 256) == "a" + sample.MASK_GLYPH + "\u23ceb"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny AR and a tiny diffusion run on the tiny corpus, shared by the CLI tests."""
    from conftest import make_tiny_data, tiny_args
    import train_ar
    import train_diffusion
    tmp_path = tmp_path_factory.mktemp("runs")
    data_dir = make_tiny_data(tmp_path)
    folders = {}
    for kind, script in (("ar", train_ar), ("diffusion", train_diffusion)):
        folders[kind] = str(tmp_path / kind)
        run_training(script, tiny_args(data_dir, folders[kind], "--max_iters=60", "--eval_interval=60", "--elbo_samples=4"))
    return folders


def test_sample_cli_both_kinds(runs, tmp_path, capsys):
    launch.sample_run(["--ckpt", runs["ar"], "--start", "the ", "--num_samples=1", "--max_new_tokens=20", "--temperature=0"])
    ar_text = capsys.readouterr().out.split("\n" + "-" * 60)[0]
    assert ar_text.startswith("the ") and len(ar_text) == 24
    (tmp_path / "prompt.txt").write_text("the cat [MASK*4] on")
    launch.sample_run(["--ckpt", runs["diffusion"], "--start", f"FILE:{tmp_path / 'prompt.txt'}", "--num_samples=2",
                 "--gen_length=8", "--steps=6", "--block_length=4", "--show"])
    out = capsys.readouterr().out.splitlines()
    steps = [line for line in out if line.startswith("step")]
    assert len(steps) == 6 and sample.MASK_GLYPH * 4 in steps[0] and sample.MASK_GLYPH not in steps[-1]
    texts = [line for line in out if line.startswith("the cat ")]
    assert len(texts) == 2 and all(t.endswith(" on") is False and len(t) == len("the cat xxxx on") + 8 for t in texts)




def test_a_bpe_checkpoint_decodes_with_no_data_folder_and_no_network(tmp_path, monkeypatch, capsys):
    """The checkpoint carries its BPE's ranks: sample.py needs neither the data folder nor tiktoken's downloads."""
    import shutil
    import tiktoken
    import tiktoken.load
    import train_ar
    import train_diffusion
    from conftest import make_tiny_documents, tiny_args
    data_dir = make_tiny_documents(tmp_path, "bpe", vocab_size=270)
    for kind, script in (("ar", train_ar), ("diffusion", train_diffusion)):
        steps = 150 if kind == "ar" else 60  # AR: enough that its samples are words at any seed, not spaces
        args = [a for a in tiny_args(data_dir, str(tmp_path / kind), f"--max_iters={steps}", f"--eval_interval={steps}",
                                     "--elbo_samples=4", "--lr=3e-3", "--dataset=docs") if a != "--dataset=tiny"]
        run_training(script, args)
    shutil.rmtree(data_dir)
    capsys.readouterr()

    def offline(*a, **k):
        raise ConnectionError("no network")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    monkeypatch.setattr(tiktoken.load, "read_file_cached", offline)
    launch.sample_run(["--ckpt", str(tmp_path / "ar"), "--start", "the cat", "--num_samples=1", "--max_new_tokens=12",
                 "--temperature=0.5", "--seed=3"])
    text = capsys.readouterr().out.split("\n" + "-" * 60)[0]
    words = text.replace("<|endoftext|>", " ").split()
    assert text.startswith("the cat") and len(words) >= 4
    # a 60-step model of an 11-word corpus writes its words: most of what it writes are corpus words
    corpus_words = {"the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "it"}
    assert sum(w in corpus_words for w in words) >= len(words) // 2
    launch.sample_run(["--ckpt", str(tmp_path / "diffusion"), "--start", "the [MASK*3] sat", "--gen_length=0",
                 "--temperature=0"])
    out = capsys.readouterr().out.splitlines()[0]
    assert out.startswith("the ") and out.endswith(" sat") and "[MASK" not in out


def test_sample_cli_errors(runs):
    with pytest.raises(ValueError, match="cannot infill"):
        launch.sample_run(["--ckpt", runs["ar"], "--start", "a[MASK]b"])
    with pytest.raises(ValueError, match="context"):
        launch.sample_run(["--ckpt", runs["ar"], "--start", "x" * 40])
    with pytest.raises(ValueError, match="longer than the context"):
        launch.sample_run(["--ckpt", runs["diffusion"], "--start", "abc", "--gen_length=40"])
    with pytest.raises(ValueError, match="cannot read"):
        launch.sample_run(["--ckpt", runs["ar"], "--start", "FILE:/nonexistent/prompt.txt"])
    with pytest.raises(SystemExit, match="unknown option --top_q"):
        launch.sample_run(["--ckpt", runs["ar"], "--top_q=0.5"])


def test_the_sampler_never_draws_a_token_its_training_never_held(runs, capsys):
    """The tiny corpus holds ~15 of the 256 byte tokens: a checkpoint records which, and both decoders draw only
    those, even hot. Without that rule the same draws do reach the never-trained ids."""
    from conftest import tiny_text
    from runtime import load_checkpoint, model_from_checkpoint
    ckpt = load_checkpoint(runs["ar"])
    trained = set(ckpt["trained_ids"].tolist())
    assert trained == set(tiny_text()[:len(tiny_text()) * 9 // 10].encode())  # the U training tokens' ids
    prompt = torch.tensor([list(b"the cat ")] * 8)
    for guarded in (False, True):
        model = model_from_checkpoint(ckpt)
        if guarded:
            sample.trained_only(model, ckpt["trained_ids"])
        out = ar_generate(model, prompt, 200, temperature=3.0, generator=torch.Generator().manual_seed(0))
        drawn = set(out[:, prompt.shape[1]:].flatten().tolist())
        assert (drawn <= trained) == guarded, (guarded, sorted(drawn - trained)[:5])
    diffusion = load_checkpoint(runs["diffusion"])
    model = model_from_checkpoint(diffusion)
    sample.trained_only(model, diffusion["trained_ids"])
    x = torch.full((8, 32), model.config.mask_id)
    out = diffusion_generate(model, x, 0, 32, temperature=3.0, generator=torch.Generator().manual_seed(0))
    assert set(out.flatten().tolist()) <= set(diffusion["trained_ids"].tolist())
    # and through the command line, the text holds only the corpus's characters
    launch.sample_run(["--ckpt", runs["ar"], "--start", "the ", "--num_samples=2", "--max_new_tokens=100",
                       "--temperature=3"])
    assert set(capsys.readouterr().out.replace("-" * 60, "")) <= set(tiny_text()) | {"\n"}


def test_an_infilling_prompt_fills_its_holes_and_generates_nothing_after_them(runs, capsys):
    launch.sample_run(["--ckpt", runs["diffusion"], "--start", "the [MASK*4] sat", "--num_samples=1"])
    text = capsys.readouterr().out.split("\n" + "-" * 60)[0]
    assert text.startswith("the ") and text.endswith(" sat") and len(text) == len("the ") + 4 + len(" sat")
