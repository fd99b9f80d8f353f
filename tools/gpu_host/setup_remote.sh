#!/usr/bin/env bash
# Sourced on the GPU host (which has CUDA and NCCL but no MPI, and other library versions):
# unpacks .device/pk into /tmp/pk, Debian's Open MPI at its own paths (nothing overwritten),
# and sets the environment for mpirun as root over shared memory, with NVLink multicast off.
PK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p /tmp/pk && tar xJf $PK/bins.txz -C /tmp/pk
if ! command -v orterun >/dev/null; then
  mkdir -p /tmp/ompi && tar xJf $PK/ompi.txz -C /tmp/ompi
  (cd /tmp/ompi && find . -type f -o -type l | while read -r f; do
     d=/${f#./}; [[ -e $d ]] || { mkdir -p "$(dirname "$d")"; cp -a "$f" "$d"; }; done)
  ln -sf /usr/bin/orterun /usr/local/bin/mpirun
fi
export LD_LIBRARY_PATH=/tmp/pk/lib:${LD_LIBRARY_PATH:-}:$(dirname $(find /usr/local /usr/lib -name 'libcupti.so*' 2>/dev/null | head -1) 2>/dev/null)
export PATH=/tmp/pk/bin:$PATH
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_pml=ob1 OMPI_MCA_mca_base_component_show_load_errors=0
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
