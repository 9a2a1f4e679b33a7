/*
 * C-level stress driver for ring.c: one producer thread and one consumer
 * thread push ITEMS variable-length records through a small ring, using
 * every API path (single push/pop, staged batches, zero-copy peek, waits).
 * The consumer checks every record's sequence number, length and bytes and
 * both sides fold the payloads into a checksum that must match.
 *
 *   ring_stress ITEMS CAPACITY SPIN
 *
 * Exit 0: all good (prints one "key=value" line); 1: a record was wrong;
 * 2: a wait timed out (a lost wake-up or a stall); 3: usage / setup.
 * Built and run by tests/backend/test_ring_stress.py, also under ThreadSanitizer.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ring.h"

#define WAIT_NS (10LL * 1000000000LL) /* any single wait longer = failure */
#define MAX_PAYLOAD 64u

typedef struct {
    fx_ring ring; /* each thread has its own handle on the same buffer */
    uint64_t items;
    uint64_t checksum;
    int failed; /* 1 bad record, 2 timeout, 3 other status */
    char why[160];
} side;

static void *g_mem;
static size_t g_size;
static uint32_t g_spin;

/* Payload of record `seq`: its length and bytes follow from seq alone. */
static uint32_t payload_len(uint64_t seq)
{
    return 8 + (uint32_t)((seq * 2654435761u) % (MAX_PAYLOAD - 7));
}

static void fill_payload(uint64_t seq, unsigned char *p, uint32_t len)
{
    memcpy(p, &seq, 8);
    for (uint32_t i = 8; i < len; i++)
        p[i] = (unsigned char)(seq * 31 + i);
}

static uint64_t fold(uint64_t h, const unsigned char *p, uint32_t len)
{
    for (uint32_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ull; /* FNV-1a */
    return h;
}

static void nap(long ns)
{
    struct timespec ts = {0, ns};
    nanosleep(&ts, NULL);
}

static int fail(side *s, int code, const char *what, uint64_t seq, fx_status st)
{
    fx_ring_stats t;
    fx_ring_stats_get(&s->ring, &t);
    s->failed = code;
    snprintf(s->why, sizeof s->why,
             "%s at seq %" PRIu64 ": %s (head=%" PRIu64 " tail=%" PRIu64
             " waiting c=%u p=%u staged=%" PRIu64 " wpos=%" PRIu64 " held=%" PRIu64
             " rpos=%" PRIu64 ")",
             what, seq, fx_status_name(st), t.head, t.tail, t.consumer_waiting,
             t.producer_waiting, s->ring.staged, s->ring.wpos, s->ring.held, s->ring.rpos);
    return -1;
}

/* Push records [seq, seq + n) as one staged batch; waits when full. */
static int produce_batch(side *s, uint64_t seq, uint64_t n)
{
    for (uint64_t k = seq; k < seq + n; k++) {
        uint32_t len = payload_len(k);
        void *dst;
        fx_status st;
        while ((st = fx_ring_reserve(&s->ring, len, &dst)) == FX_FULL) {
            fx_ring_publish(&s->ring); /* let the consumer make room */
            if ((st = fx_ring_wait_writable(&s->ring, len, WAIT_NS)) != FX_OK)
                return fail(s, st == FX_TIMEOUT ? 2 : 3, "wait_writable", k, st);
        }
        if (st != FX_OK)
            return fail(s, 3, "reserve", k, st);
        fill_payload(k, dst, len);
        s->checksum = fold(s->checksum, dst, len);
    }
    fx_ring_publish(&s->ring);
    return 0;
}

static void *producer(void *arg)
{
    side *s = arg;
    unsigned char buf[MAX_PAYLOAD];
    uint64_t seq = 0;
    while (seq < s->items) {
        if ((seq >> 12) & 1) { /* alternate 4096-record phases */
            uint64_t n = s->items - seq < 32 ? s->items - seq : 32;
            if (produce_batch(s, seq, n) < 0)
                return NULL;
            seq += n;
        } else {
            uint32_t len = payload_len(seq);
            fill_payload(seq, buf, len);
            fx_status st = fx_ring_push_wait(&s->ring, buf, len, WAIT_NS);
            if (st != FX_OK) {
                fail(s, st == FX_TIMEOUT ? 2 : 3, "push_wait", seq, st);
                return NULL;
            }
            s->checksum = fold(s->checksum, buf, len);
            seq++;
        }
        if ((seq & 0xFFFF) == 0x8000)
            nap(200000); /* let the consumer drain and sleep on empty */
    }
    return NULL;
}

static int check_record(side *s, uint64_t seq, const unsigned char *p, uint32_t len)
{
    unsigned char want[MAX_PAYLOAD];
    uint32_t want_len = payload_len(seq);
    fill_payload(seq, want, want_len);
    if (len != want_len || memcmp(p, want, len) != 0)
        return fail(s, 1, "wrong record", seq, FX_OK);
    s->checksum = fold(s->checksum, p, len);
    return 0;
}

static void *consumer(void *arg)
{
    side *s = arg;
    unsigned char buf[MAX_PAYLOAD];
    uint64_t seq = 0;
    while (seq < s->items) {
        fx_status st = fx_ring_wait_readable(&s->ring, WAIT_NS);
        if (st != FX_OK) {
            fail(s, st == FX_TIMEOUT ? 2 : 3, "wait_readable", seq, st);
            return NULL;
        }
        if ((seq >> 11) & 1) { /* zero-copy batch: peek/advance, one release */
            const void *p;
            uint32_t len;
            while (seq < s->items && (st = fx_ring_peek(&s->ring, &p, &len)) == FX_OK) {
                if (check_record(s, seq, p, len) < 0)
                    return NULL;
                fx_ring_advance(&s->ring);
                seq++;
            }
            fx_ring_release(&s->ring);
        } else { /* copying pops */
            uint32_t len;
            while (seq < s->items && (st = fx_ring_try_pop(&s->ring, buf, sizeof buf, &len)) == FX_OK) {
                if (check_record(s, seq, buf, len) < 0)
                    return NULL;
                seq++;
            }
        }
        if (st != FX_OK && st != FX_EMPTY) {
            fail(s, 3, "pop", seq, st);
            return NULL;
        }
        if ((seq & 0xFFFF) == 0x4000)
            nap(200000); /* let the producer fill up and sleep on full */
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s ITEMS CAPACITY SPIN\n", argv[0]);
        return 3;
    }
    uint64_t items = strtoull(argv[1], NULL, 10);
    uint32_t capacity = (uint32_t)strtoul(argv[2], NULL, 10);
    g_spin = (uint32_t)strtoul(argv[3], NULL, 10);
    g_size = fx_ring_required_size(capacity);
    if (g_size == 0 || capacity < 4 * (MAX_PAYLOAD + 16)) {
        fprintf(stderr, "bad capacity %u\n", capacity);
        return 3;
    }
    g_mem = aligned_alloc(4096, (g_size + 4095) / 4096 * 4096);
    side prod = {.items = items, .checksum = 14695981039346656037ull};
    side cons = {.items = items, .checksum = 14695981039346656037ull};
    if (g_mem == NULL || fx_ring_init(&prod.ring, g_mem, g_size, capacity) != FX_OK ||
        fx_ring_attach(&cons.ring, g_mem, g_size) != FX_OK) {
        fprintf(stderr, "setup failed\n");
        return 3;
    }
    fx_ring_set_spin(&prod.ring, g_spin);
    fx_ring_set_spin(&cons.ring, g_spin);
    pthread_t tp, tc;
    if (pthread_create(&tc, NULL, consumer, &cons) != 0 ||
        pthread_create(&tp, NULL, producer, &prod) != 0) {
        fprintf(stderr, "pthread_create failed\n");
        return 3;
    }
    pthread_join(tp, NULL);
    if (prod.failed) /* unblock a consumer waiting for records never sent */
        fx_ring_reset(&prod.ring);
    pthread_join(tc, NULL);
    fx_ring_stats st;
    fx_ring_stats_get(&cons.ring, &st);
    int rc = prod.failed ? prod.failed : cons.failed;
    if (rc) {
        if (prod.failed)
            fprintf(stderr, "FAILED (producer): %s\n", prod.why);
        if (cons.failed)
            fprintf(stderr, "FAILED (consumer): %s\n", cons.why);
    } else if (prod.checksum != cons.checksum || st.pushed != items || st.popped != items) {
        fprintf(stderr, "FAILED: checksum %016" PRIx64 " != %016" PRIx64
                        " or counts %" PRIu64 "/%" PRIu64 "\n",
                prod.checksum, cons.checksum, st.pushed, st.popped);
        rc = 1;
    }
    printf("items=%" PRIu64 " checksum=%016" PRIx64 " pushed=%" PRIu64 " popped=%" PRIu64
           " wraps=%" PRIu64 " producer_sleeps=%" PRIu64 " consumer_sleeps=%" PRIu64
           " producer_unsignalled=%" PRIu64 " consumer_unsignalled=%" PRIu64 "\n",
           items, cons.checksum, st.pushed, st.popped, st.tail / capacity, st.producer_sleeps,
           st.consumer_sleeps, st.producer_unsignalled, st.consumer_unsignalled);
    free(g_mem);
    return rc;
}
