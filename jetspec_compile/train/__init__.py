"""Training a JetSpec draft head for a frozen Qwen3 target (the paper's recipe).

For each training sequence (token ids, optionally target-regenerated):

* the frozen target runs once over the sequence: its next-token logits are the teacher, its tapped
  hidden states are the head's context;
* up to ``anchors`` anchor positions p are sampled; each anchor opens a block ``[ids[p], MASK x D]``
  at positions p..p+D whose context is the taps of tokens 0..p-1;
* slot d (1..D) of a block predicts the token at p+d. Its loss is the forward KL
  ``KL(softmax(t/T) || softmax(s/T)) * T^2`` between the teacher's distribution at position p+d-1
  (the target's next-token distribution for position p+d) and the student's; the anchor slot is
  unsupervised, all supervised slots weigh the same and slots past the sequence end are inactive.
  The loss is the mean over the active slots of a batch. AdamW, linear warm-up, cosine decay.

All anchor blocks of one sequence run in ONE head forward. The queries are all blocks' slots; the
keys are the projected context rows of the sequence plus the blocks' own slot rows. Block b's slots
see context rows ``< p_b`` and their own block's slots (causally for a causal head), never another
block. That attention is :class:`BlockTrainingAttention`, handed to Hugging Face's decoder layers
through the ``jetspec_cache`` keyword exactly like the inference caches of :mod:`.attention`; it is
plain differentiable torch (the ``jetspec::tree_attention`` op has no autograd). It stores the
context and the block rows separately (scores ``[H, N, T]`` + ``[H, blocks, bs, bs]``), never a
dense ``N x (T + N)`` mask.

Modules: :mod:`.attention` (the batched block attention), :mod:`.loss` (KD loss, per-sequence statistics),
:mod:`.data` (documents, sequences, regeneration, anchors), :mod:`.new_head` (fresh, from-target and
warm-started heads), :mod:`.evaluation` (held-out loss, agreement, chain tau), :mod:`.progress`
(``rich.progress``), :mod:`.loop` (``train_head``, curves), :mod:`.cli` (``train-head``).
"""

from .attention import BlockTrainingAttention, block_student_hidden
from .cli import register_cli
from .data import TrainSequence, load_documents, make_sequences, regenerate, sample_anchors
from .evaluation import chain_walk_tau, evaluate_head
from .loop import TrainOptions, plot_training, train_head
from .loss import depth_weights, kd_loss
from .new_head import build_head_for_target, init_head_from_target, warm_start_head

__all__ = [
    "BlockTrainingAttention",
    "TrainOptions",
    "TrainSequence",
    "block_student_hidden",
    "build_head_for_target",
    "chain_walk_tau",
    "depth_weights",
    "evaluate_head",
    "init_head_from_target",
    "kd_loss",
    "load_documents",
    "make_sequences",
    "plot_training",
    "register_cli",
    "regenerate",
    "sample_anchors",
    "train_head",
    "warm_start_head",
]
