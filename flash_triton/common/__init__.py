"""What the op packages share: :mod:`.custom_op` (the named argument contract of a custom op, input casting, the
dropout seed; no triton), :mod:`.jit` (Triton helpers of the kernels and launchers; imports triton) and :mod:`.gate`
(the gate's backward kernel, shared by both cores; imports triton)."""
