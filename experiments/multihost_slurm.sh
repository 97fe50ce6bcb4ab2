#!/bin/bash
# Multi-host mct_jax on a SLURM cluster: one process per node, every GPU of every node used.
#
#   sbatch experiments/multihost_slurm.sh experiments/cifar100_ipc10.cfg
#
# With --distributed each process calls jax.distributed.initialize(), which reads the
# coordinator address, the number of processes and this process's id from SLURM's
# environment (SLURM_JOB_NODELIST, SLURM_NTASKS, SLURM_PROCID). Elsewhere pass them yourself:
#   --coordinator_address=HOST0:PORT --num_processes=N --process_id=I
# on each of the N hosts (HOST0 runs process 0; PORT must be free and reachable).
#
# The output folders must be on a filesystem every node sees: process 0 writes the experts
# (the others send theirs to it) and the distillation results, and every process reads the
# experts and, when resuming, the checkpoint.
#SBATCH --job-name=mct_jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --time=24:00:00
set -euo pipefail
PRESET=${1:?usage: sbatch experiments/multihost_slurm.sh PRESET.cfg}

# Experts: each process trains its share (expert i on process i % N); re-submitting after a
# failure trains only the experts that are missing.
srun python -m mct_jax.expert --flagfile="$PRESET" --distributed
# Distillation: each student step's minibatch is split across all GPUs of all nodes.
srun python -m mct_jax.distill --flagfile="$PRESET" --distributed
