# Sourced by tools/build_llamacpp.sh and bench/llamacpp_gpu.sh: which of ggml-cuda's template
# instances (kernel variants, one source file each) the peer benchmark's model runs. It is a
# Llama with head size 128 in Q4_K and Q6_K and an F16 KV cache, so of the MMQ, FlashAttention
# tile and vector families only Q4_K/Q6_K MMQ, the head-128 tile kernel and the F16 vector
# kernel. The build leaves the others out and `pack` drops them from libggml-cuda.a (stubs
# that abort with the kernel's name stand in for them).
LLAMA_INSTANCE_FAMILIES='^(mmq|fattn-tile|fattn-vec)-instance-'
LLAMA_INSTANCES_USED='^(mmq-instance-(q4_k|q6_k)|fattn-tile-instance-dkq128-dv128|fattn-vec-instance-f16-f16)\.'
