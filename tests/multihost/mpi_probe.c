/* A plain MPI program for the namespace hosts: every rank reports its hostname and local
 * rank, checks an all-reduce against the closed form, and rank 0 times small all-reduces
 * (the size of one decode step's reduction for a 576-wide model), so the harness can be
 * proven without tpnode. Built by the multihost tests with mpicc.
 *   mpi_probe [ITERATIONS [HOLD_S]]   prints "probe: rank R host H local_size L" per rank,
 *       then "probe: allreduce ok" and "probe: allreduce_us U" on rank 0; with HOLD_S, rank 0
 *       then prints "probe: holding" and every rank keeps its connections open HOLD_S seconds
 *       (for a look at them from outside). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { kWidth = 576 };

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  int size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int iterations = argc > 1 ? atoi(argv[1]) : 200;
  int hold_s = argc > 2 ? atoi(argv[2]) : 0;

  char name[MPI_MAX_PROCESSOR_NAME] = {0};
  int name_len = 0;
  MPI_Get_processor_name(name, &name_len);
  /* Ranks on the same node share a local communicator: one rank per host means size 1. */
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
  int local_rank = 0;
  int local_size = 0;
  MPI_Comm_rank(local, &local_rank);
  MPI_Comm_size(local, &local_size);

  char* names = rank == 0 ? calloc((size_t)size, MPI_MAX_PROCESSOR_NAME) : NULL;
  MPI_Gather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, names, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, 0,
             MPI_COMM_WORLD);
  int* local_sizes = rank == 0 ? calloc((size_t)size, sizeof(int)) : NULL;
  MPI_Gather(&local_size, 1, MPI_INT, local_sizes, 1, MPI_INT, 0, MPI_COMM_WORLD);

  /* Element i of rank r is r * kWidth + i: the sum over ranks has a closed form. */
  float values[kWidth];
  float sums[kWidth];
  int bad = 0;
  double t0 = 0.0;
  for (int it = 0; it <= iterations; ++it) {
    if (it == 1) t0 = MPI_Wtime(); /* the first one sets up connections */
    for (int i = 0; i < kWidth; ++i) values[i] = (float)(rank * kWidth + i);
    MPI_Allreduce(values, sums, kWidth, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    for (int i = 0; i < kWidth; ++i) {
      double want = (double)kWidth * size * (size - 1) / 2.0 + (double)i * size;
      if ((double)sums[i] != want) bad = 1;
    }
  }
  double elapsed = MPI_Wtime() - t0;
  int any_bad = 0;
  MPI_Reduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, 0, MPI_COMM_WORLD);

  if (rank == 0) {
    for (int r = 0; r < size; ++r) {
      printf("probe: rank %d host %s local_size %d\n", r, names + (size_t)r * MPI_MAX_PROCESSOR_NAME,
             local_sizes[r]);
    }
    printf("probe: allreduce %s\n", any_bad ? "WRONG" : "ok");
    if (iterations > 0) printf("probe: allreduce_us %.1f\n", elapsed * 1e6 / iterations);
    fflush(stdout);
    free(names);
    free(local_sizes);
  }
  if (hold_s > 0) {
    if (rank == 0) {
      printf("probe: holding\n");
      fflush(stdout);
    }
    sleep((unsigned)hold_s);
    MPI_Barrier(MPI_COMM_WORLD);
  }
  MPI_Comm_free(&local);
  MPI_Finalize();
  return any_bad;
}
