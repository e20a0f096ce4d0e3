"""Message contents between the strategy and the ClientApp: the keys both sides use.

One place for the record names and config keys, so the two apps cannot drift apart.
"""

from __future__ import annotations

# RecordDict keys
ARRAYS = "arrays"  # ArrayRecord: the adapter (down) or the update (up)
CONFIG = "config"  # ConfigRecord: what the server asks
METRICS = "metrics"  # MetricRecord: what the client measured (numbers only)
INFO = "info"  # ConfigRecord: what the client is (strings: tier, status, reason)
CONTROL = "scaffold-control"  # ArrayRecord, fp32, server -> client: SCAFFOLD's c at the client's rank (absent: off)
CONTROL_DELTA = "scaffold-control-delta"  # ArrayRecord, fp32, client -> server: its delta_c_i (flq.strategy.scaffold)

# ConfigRecord keys, server -> client
SERVER_ROUND = "server-round"
RANK = "rank"
BITS = "bits"
LOCAL_STEPS = "local-steps"
BUDGET_S = "budget-s"  # time budget on the run's clock; absent: none
BATCH_SIZE = "batch-size"  # examples per step for this round, below the client's own; absent: its own
CODEC_UP = "codec-up"  # scheme the client encodes its update with
ERROR_FEEDBACK = "error-feedback"  # bool: keep the quantization residual for next round
CLOCK = "clock"  # "virtual" or "real": how the budget is measured
HANDSHAKE_RTTS = "handshake-rtts"  # the transport's handshake round trips (virtual clock)

# MetricRecord keys, client -> server
NUM_EXAMPLES = "num-examples"  # examples trained on (train) or evaluated (evaluate)
STEPS = "steps"
LOSS_BEFORE = "loss-before"
LOSS_AFTER = "loss-after"
COMPUTE_S = "compute-s"  # measured on the client's own machine
PEAK_MEM_MB = "peak-mem-mb"
TORCH_THREADS = "torch-threads"  # intra-op threads torch trained with (a CPU tier's `threads`)
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
NUM_TRAIN = "num-train"
MEMORY_LIMIT_MB = "memory-limit-mb"
SIMULATED = "simulated"  # 1 inside Flower's simulation engine
SCORE = "score"  # accuracy; perplexity (causal-lm); ROUGE-L of generated answers (instruction)
BALANCED_ACCURACY = "balanced-accuracy"  # classification only
MACRO_F1 = "macro-f1"  # classification only
LOSS = "loss"

# ConfigRecord keys, client -> server (INFO)
TIER = "tier"
STATUS = "status"
REASON = "reason"
