/*
 * Store-buffering litmus test: the ordering the ring's wake-up relies on.
 *
 *   thread A: X = 1; r1 = Y        thread B: Y = 1; r2 = X
 *
 * r1 == r2 == 0 means each thread's load went ahead of its own earlier store.
 * C11 forbids that outcome when the store and the load are ordered by a
 * seq_cst fence between them (the ring's form) or are both seq_cst accesses;
 * it allows it for release stores and acquire loads (on x86 as on ARM).
 *
 *   litmus_sb ROUNDS PAIRS MODE      MODE: fenced | seqcst | relacq
 *
 * Each round, two new threads leave a spin barrier together and walk PAIRS
 * fresh (X, Y) pairs in step; prints one "key=value" line with the number of
 * forbidden (r1 == r2 == 0) outcomes.  Exit 0, or 2 on bad usage.
 * Built and run by tests/backend/test_ring_stress.py.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum mode { FENCED, SEQCST, RELACQ };

static enum mode g_mode;
static uint32_t g_pairs;
static _Atomic uint32_t *g_x, *g_y;
static uint32_t *g_r1, *g_r2;
static _Atomic uint32_t g_arrived;

/* Both threads leave together: each spins until the other has arrived (a
 * futex barrier would wake one of them microseconds late, and the two walks
 * would no longer overlap). */
static void start_together(void)
{
    atomic_fetch_add(&g_arrived, 1);
    while (atomic_load(&g_arrived) < 2)
        ;
}

static uint32_t store_then_load(_Atomic uint32_t *mine, _Atomic uint32_t *theirs)
{
    switch (g_mode) {
    case FENCED: /* the ring's form (ring.c, dekker_fence) */
        atomic_store_explicit(mine, 1, memory_order_release);
        atomic_thread_fence(memory_order_seq_cst);
        return atomic_load_explicit(theirs, memory_order_acquire);
    case SEQCST: /* the ring's form before the fence (STLR then LDAR on AArch64) */
        atomic_store_explicit(mine, 1, memory_order_seq_cst);
        return atomic_load_explicit(theirs, memory_order_seq_cst);
    case RELACQ: /* the control: the outcome is allowed, and shows up */
    default:
        atomic_store_explicit(mine, 1, memory_order_release);
        return atomic_load_explicit(theirs, memory_order_acquire);
    }
}

static void *thread_a(void *arg)
{
    (void)arg;
    start_together();
    for (uint32_t i = 0; i < g_pairs; i++)
        g_r1[i] = store_then_load(&g_x[i], &g_y[i]);
    return NULL;
}

static void *thread_b(void *arg)
{
    (void)arg;
    start_together();
    for (uint32_t i = 0; i < g_pairs; i++)
        g_r2[i] = store_then_load(&g_y[i], &g_x[i]);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s ROUNDS PAIRS fenced|seqcst|relacq\n", argv[0]);
        return 2;
    }
    uint32_t rounds = (uint32_t)strtoul(argv[1], NULL, 10);
    g_pairs = (uint32_t)strtoul(argv[2], NULL, 10);
    if (strcmp(argv[3], "fenced") == 0)
        g_mode = FENCED;
    else if (strcmp(argv[3], "seqcst") == 0)
        g_mode = SEQCST;
    else if (strcmp(argv[3], "relacq") == 0)
        g_mode = RELACQ;
    else {
        fprintf(stderr, "unknown mode %s\n", argv[3]);
        return 2;
    }
    if (rounds == 0 || g_pairs == 0 || g_pairs > (1u << 20)) {
        fprintf(stderr, "bad ROUNDS or PAIRS\n");
        return 2;
    }
    g_x = calloc(g_pairs, sizeof *g_x);
    g_y = calloc(g_pairs, sizeof *g_y);
    g_r1 = calloc(g_pairs, sizeof *g_r1);
    g_r2 = calloc(g_pairs, sizeof *g_r2);
    if (!g_x || !g_y || !g_r1 || !g_r2) {
        fprintf(stderr, "out of memory\n");
        return 2;
    }
    uint64_t forbidden = 0;
    for (uint32_t round = 0; round < rounds; round++) {
        for (uint32_t i = 0; i < g_pairs; i++) {
            atomic_store_explicit(&g_x[i], 0, memory_order_relaxed);
            atomic_store_explicit(&g_y[i], 0, memory_order_relaxed);
        }
        atomic_store(&g_arrived, 0);
        pthread_t a, b;
        if (pthread_create(&a, NULL, thread_a, NULL) != 0 ||
            pthread_create(&b, NULL, thread_b, NULL) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 2;
        }
        /* join: everything the threads wrote is visible here */
        pthread_join(a, NULL);
        pthread_join(b, NULL);
        for (uint32_t i = 0; i < g_pairs; i++)
            forbidden += g_r1[i] == 0 && g_r2[i] == 0;
    }
    printf("mode=%s rounds=%u pairs=%u forbidden=%" PRIu64 "\n", argv[3], rounds, g_pairs,
           forbidden);
    return 0;
}
