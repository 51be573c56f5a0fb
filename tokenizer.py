"""
Tokenizers, all as tiktoken Encodings, and a byte-level BPE trainer that needs no network.

    bytes   256 byte values: offline, a tiny embedding, and loss per token = loss per byte
    gpt2    GPT-2's BPE (the papers'); tiktoken downloads its file once, so it needs the network
    bpe     byte-level BPE trained here on the train split (GPT-2's pre-split pattern, any vocab size): the papers'
            kind of token with no network. Its ranks sit beside the data in tiktoken's own ranks-file format
            (`tokenizer.tiktoken`, which tiktoken.load.load_tiktoken_bpe reads) and inside every checkpoint.

Data with document boundaries (the Python-source corpus) ends every document with an end-of-text token whose id
follows the tokenizer's own (GPT-2's 50256 already is one); meta.json records it as `eot_id`.
"""
import base64
import binascii
import hashlib
import heapq
import os
from collections import Counter

import regex  # tiktoken's own dependency; Python's `re` has no \p{L}
import tiktoken


# GPT-2's pre-split: contractions, letter runs, digit runs, punctuation runs, each with one leading space
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
RANKS_FILE = "tokenizer.tiktoken"


# ----------------------------------------------------------------------------- training

def train_bpe(texts, vocab_size):
    """Ranks {token bytes: id} of a byte-level BPE with exactly `vocab_size` tokens, trained on `texts` (a string
    or a list of documents).

    The 256 bytes come first; then each step merges the most frequent adjacent pair (ties: the smaller pair of
    byte strings, so the result is deterministic) inside GPT-2's pre-split pieces. Pairs are counted once over
    the distinct pieces weighted by frequency and updated incrementally at each merge, touching only the pieces
    that hold the merged pair, so 8K merges over ~10 MB take seconds, not hours."""
    if not 256 <= vocab_size <= 65535:
        raise ValueError(f"--vocab_size {vocab_size}: a byte-level BPE needs 256 to 65535 tokens")
    ranks = {bytes([i]): i for i in range(256)}
    token_bytes = [bytes([i]) for i in range(256)]
    words, freqs = piece_counts([texts] if isinstance(texts, str) else texts)
    pair_counts, where = count_pairs(words, freqs)
    heap = [(-count, token_bytes[a], token_bytes[b], a, b) for (a, b), count in pair_counts.items()]
    heapq.heapify(heap)
    while len(ranks) < vocab_size:
        if not heap:
            raise ValueError(f"the train text allows only {len(ranks)} BPE tokens: use a smaller --vocab_size "
                            f"or more text")
        neg_count, _, _, a, b = heapq.heappop(heap)
        count = pair_counts.get((a, b), 0)
        if count != -neg_count:  # a stale entry: the pair's count changed since it was pushed
            if count > 0:
                heapq.heappush(heap, (-count, token_bytes[a], token_bytes[b], a, b))
            continue
        merged = token_bytes[a] + token_bytes[b]
        if merged not in ranks:  # the same bytes can come from two different pairs: one id for both
            ranks[merged] = len(token_bytes)
            token_bytes.append(merged)
        new_id = ranks[merged]
        for pair in merge_pair(words, freqs, pair_counts, where, (a, b), new_id):
            heapq.heappush(heap, (-pair_counts[pair], token_bytes[pair[0]], token_bytes[pair[1]], *pair))
    return ranks


def piece_counts(texts):
    """The distinct pre-split pieces of the texts as lists of byte ids, and how often each occurs."""
    counts = Counter()
    for text in texts:
        counts.update(regex.findall(GPT2_PATTERN, text))
    words = [list(piece.encode("utf-8")) for piece in counts]
    return words, list(counts.values())


def count_pairs(words, freqs):
    """Frequency-weighted counts of adjacent pairs, and for each pair the pieces that hold it."""
    pair_counts, where = Counter(), {}
    for index, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freq
            where.setdefault(pair, set()).add(index)
    return pair_counts, where


def merge_pair(words, freqs, pair_counts, where, pair, new_id):
    """Replace `pair` by `new_id` in every piece that holds it, updating the counts; returns the pairs whose
    count grew (they need a fresh heap entry; shrunk ones are found stale when popped)."""
    grown = set()
    for index in where.pop(pair, ()):
        word, freq = words[index], freqs[index]
        merged, i = [], 0
        while i < len(word):
            if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
                merged.append(new_id)
                i += 2
            else:
                merged.append(word[i])
                i += 1
        for old in zip(word, word[1:]):
            pair_counts[old] -= freq
        for new in zip(merged, merged[1:]):
            pair_counts[new] += freq
            where.setdefault(new, set()).add(index)
            if new_id in new:  # only pairs holding the new token can have grown
                grown.add(new)
        words[index] = merged
    pair_counts.pop(pair, None)
    return [p for p in grown if pair_counts[p] > 0]


# ----------------------------------------------------------------------------- ranks files

def ranks_to_text(ranks):
    """tiktoken's ranks-file format: one "base64(token bytes) rank" line per token, in rank order (what
    tiktoken.load.dump_tiktoken_bpe writes; that one needs the optional blobfile package)."""
    return "".join(f"{base64.b64encode(token).decode()} {rank}\n"
                   for token, rank in sorted(ranks.items(), key=lambda item: item[1]))


def save_ranks(ranks, path):
    """Write the ranks file atomically; returns its text."""
    text = ranks_to_text(ranks)
    tmp = f"{path}.{os.getpid()}.tmp"  # this process's own
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return text


def ranks_from_text(text):
    """Parse a ranks file's text (a ValueError if it is not one). Same format as tiktoken.load.load_tiktoken_bpe, which
    would also cache a local file under its path's name (a retrained file at the same path would come back stale)."""
    try:
        ranks = {base64.b64decode(token, validate=True): int(rank)
                 for token, rank in (line.split() for line in text.splitlines() if line)}
    except (ValueError, binascii.Error):
        raise ValueError("the BPE ranks file is damaged (each line must be a base64 token and its rank): prepare the "
                        "data again with prepare_data.py --overwrite") from None
    if sorted(ranks.values()) != list(range(len(ranks))) or len(ranks) < 256:
        raise ValueError("the BPE ranks file is damaged (its ranks are not 0 ... n-1 over at least the 256 bytes): "
                        "prepare the data again with prepare_data.py --overwrite")
    return ranks


# ----------------------------------------------------------------------------- encodings

def make_encoding(name, ranks_text=None, eot_id=None):
    """The tiktoken Encoding called `name` ('bytes', 'gpt2' or 'bpe'; a 'bpe' needs its ranks file's text), with
    the end-of-text token at `eot_id` when the data has document boundaries."""
    if name == "gpt2":
        try:
            return tiktoken.get_encoding("gpt2")  # its <|endoftext|> is 50256
        except Exception as e:
            raise ValueError(f"could not load the GPT-2 BPE file (tiktoken downloads it once and caches it): "
                            f"{type(e).__name__}; offline, use --tokenizer bpe or bytes") from None
    special = {EOT: eot_id} if eot_id is not None else {}
    if name == "bytes":
        # no pre-splitting needed: every token is one byte
        return tiktoken.Encoding(name="bytes", pat_str=r"[\s\S]", special_tokens=special,
                                 mergeable_ranks={bytes([i]): i for i in range(256)})
    if name == "bpe":
        if ranks_text is None:
            raise ValueError("a 'bpe' tokenizer needs its ranks file: re-run prepare_data.py --tokenizer bpe")
        ranks = ranks_from_text(ranks_text)
        return tiktoken.Encoding(name=f"bpe{len(ranks)}", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                 special_tokens=special)
    raise ValueError(f"unknown tokenizer '{name}': choose bytes, bpe or gpt2")


def eot_id_for(name, n_vocab):
    """The end-of-text id for documents: GPT-2's own, else the first id after the tokenizer's tokens."""
    return 50256 if name == "gpt2" else n_vocab


def portable_meta(meta, data_dir):
    """meta.json's entries plus, for a bpe, the text of its ranks file (`ranks_text`): a checkpoint that saves
    this decodes its tokens with no data folder and no network."""
    if meta["tokenizer"] != "bpe" or "ranks_text" in meta:
        return meta
    path = os.path.join(data_dir, meta.get("ranks_file", RANKS_FILE))
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} cannot be read ({getattr(e, 'strerror', None) or type(e).__name__}): prepare the "
                        f"data again with prepare_data.py --overwrite") from None
    if hashlib.sha256(text.encode()).hexdigest() != meta.get("ranks_sha256"):
        raise ValueError(f"{path} is not the tokenizer that made this data (its sha256 differs from meta.json's "
                        f"ranks_sha256): prepare the data again with prepare_data.py --overwrite")
    return dict(meta, ranks_text=text)


def same_tokenizer(meta, other):
    """Whether two metas (a data folder's, a checkpoint's) describe the same tokens: name, size and, for a bpe,
    the very same ranks."""
    return (meta["tokenizer"], meta["n_vocab"], meta.get("ranks_sha256")) == \
        (other["tokenizer"], other["n_vocab"], other.get("ranks_sha256"))


def tokenizer_from_meta(meta, data_dir=None):
    """The Encoding that a data folder's meta.json (give its data_dir) or a checkpoint's saved meta describes."""
    if meta["tokenizer"] == "bpe":
        meta = portable_meta(meta, data_dir or ".")
    return make_encoding(meta["tokenizer"], meta.get("ranks_text"), meta.get("eot_id"))
