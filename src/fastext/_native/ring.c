/*
 * fastext ring: SPSC variable-length record ring in shared memory.
 *
 * Layout of the buffer:
 *
 *   [ header: FX_RING_HEADER_SIZE bytes, five 128-byte lines ][ data area ]
 *
 * The data area is `capacity` bytes, a power of two.  `head` and `tail` are
 * byte counters that only grow (64 bits: they never wrap in practice); the
 * offset of a position is `pos & (capacity - 1)`.  Bytes in [head, tail) are
 * published records the consumer has not handed back yet.
 *
 * A record is an 8-byte header {u32 len, u32 kind} and the payload padded to
 * 8 bytes.  A record never straddles the end of the data area: when it would,
 * the producer first writes a PAD record covering the rest of the area, so
 * every payload is contiguous (a reader can hand out one pointer / one
 * memoryview).
 *
 * Memory ordering, in one paragraph (each site repeats the reason it needs):
 * the producer writes record bytes with plain stores and then publishes the
 * new tail with a release store; the consumer acquire-loads tail before
 * reading those bytes.  Symmetrically the consumer release-stores head after
 * it has finished reading, and the producer acquire-loads head before
 * overwriting.  Waking needs one more thing: "publish, then check whether the
 * peer sleeps" against "say I sleep, then check for work" is a store->load
 * pattern on each side (Dekker), which release/acquire does not order (a
 * store may sit in the store buffer while a later load goes ahead, also on
 * x86).  Each side therefore puts atomic_thread_fence(memory_order_seq_cst)
 * between its store and its load: the event-count form of the Linux kernel's
 * futex users and of folly's EventCount.  Two seq_cst fences are ordered in
 * C11's single total order, so at least one side sees the other's store,
 * whatever the target compiles a seq_cst store or load to.  Fences rather than
 * seq_cst accesses: on AArch64 a seq_cst store and load (STLR then LDAR) are
 * ordered by the hardware, but qemu-user on an x86 host lets that store pass
 * that load (a store-buffering litmus run there shows the forbidden outcome;
 * tests/stress/litmus_sb.c, run by tests/backend/test_ring_stress.py), and the
 * ring stalled there exactly so.
 *
 * Sleeps are bounded too (FX_RING_MAX_SLEEP_NS): a wake-up lost to any cause
 * (a fence missing on some target, a peer killed between its publish and its
 * wake) costs one bounded stall, never a caller's timeout.  A capped sleep
 * that ends to find progress nobody signalled is counted (`unsignalled` in the
 * wait line): it should stay 0, and a non-zero count names the bug.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* syscall(), clock_gettime() under -std=c11 */
#endif

#include "ring.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef __linux__
#error "fastext ring waits use Linux futexes"
#endif

/* The header is shared between processes, so its atomics must be lock-free
 * (an address-free hardware instruction, not a hidden process-local lock). */
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must be lock-free");
_Static_assert(ATOMIC_LONG_LOCK_FREE == 2 || ATOMIC_LLONG_LOCK_FREE == 2,
               "64-bit atomics must be lock-free");
_Static_assert(sizeof(_Atomic uint64_t) == 8, "unexpected atomic size");

#define FX_MAGIC 0x46585247u /* "FXRG" */
#define FX_VERSION 1u
/* 128, not 64: adjacent-line prefetchers pull lines in pairs, so 64-byte
 * separation still lets producer and consumer lines interfere. */
#define FX_LINE 128

#define REC_HDR 8u
#define REC_DATA 0x31434552u /* "REC1" */
#define REC_PAD 0x31444150u  /* "PAD1" */

/* Lines are separated by explicit padding rather than alignas: the buffer is
 * only required to be 8-byte aligned, and alignas would let the compiler
 * assume more.
 *
 * Where one side sleeps.  Only that side (the waiter) sets `waiting` and
 * counts `sleeps`; only its peer (the waker) clears `waiting` and bumps
 * `bell`. */
struct wait_line {
    _Atomic uint32_t bell;    /* futex word: bumped by the waker           */
    _Atomic uint32_t waiting; /* 1 while the waiter is (about to be) asleep */
    _Atomic uint64_t sleeps;  /* futex sleeps taken (statistics)           */
    _Atomic uint64_t unsignalled; /* capped sleeps that found unsignalled progress */
    unsigned char pad_[FX_LINE - 2 * 4 - 2 * 8];
};

struct fx_ring_shared {
    /* line 0: written by init/reset only, read by everyone */
    _Atomic uint32_t magic;
    uint32_t version;
    uint32_t capacity;
    uint32_t header_size;
    _Atomic uint32_t generation;
    unsigned char pad0_[FX_LINE - 5 * 4];
    /* line 1: producer writes */
    _Atomic uint64_t tail;
    _Atomic uint64_t pushed;
    unsigned char pad1_[FX_LINE - 2 * 8];
    /* line 2: consumer writes */
    _Atomic uint64_t head;
    _Atomic uint64_t popped;
    unsigned char pad2_[FX_LINE - 2 * 8];
    /* line 3: the consumer sleeps here when empty; the producer wakes it */
    struct wait_line data_wait;
    /* line 4: the producer sleeps here when full; the consumer wakes it */
    struct wait_line space_wait;
};

/* The layout is an ABI between processes: pin it. */
_Static_assert(offsetof(struct fx_ring_shared, tail) == 1 * FX_LINE, "layout");
_Static_assert(offsetof(struct fx_ring_shared, head) == 2 * FX_LINE, "layout");
_Static_assert(offsetof(struct fx_ring_shared, data_wait) == 3 * FX_LINE, "layout");
_Static_assert(offsetof(struct fx_ring_shared, space_wait) == 4 * FX_LINE, "layout");
_Static_assert(sizeof(struct fx_ring_shared) == FX_RING_HEADER_SIZE, "layout");

typedef struct rec_hdr {
    uint32_t len;
    uint32_t kind;
} rec_hdr;

/* ---- small helpers -------------------------------------------------------- */

const char *fx_status_name(fx_status st)
{
    switch (st) {
    case FX_OK: return "FX_OK";
    case FX_EMPTY: return "FX_EMPTY";
    case FX_FULL: return "FX_FULL";
    case FX_TIMEOUT: return "FX_TIMEOUT";
    case FX_INTERRUPTED: return "FX_INTERRUPTED";
    case FX_TOO_BIG: return "FX_TOO_BIG";
    case FX_CORRUPT: return "FX_CORRUPT";
    case FX_BAD_ARG: return "FX_BAD_ARG";
    case FX_STALE: return "FX_STALE";
    }
    return "FX_UNKNOWN";
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

static bool valid_capacity(uint64_t capacity)
{
    return capacity >= FX_RING_MIN_CAPACITY && capacity <= FX_RING_MAX_CAPACITY &&
           (capacity & (capacity - 1)) == 0;
}

static inline uint64_t rec_total(uint64_t len)
{
    return REC_HDR + ((len + FX_RING_ALIGN - 1) & ~(uint64_t)(FX_RING_ALIGN - 1));
}

/* Bytes a record of `len` consumes when written at `pos`: the record, plus
 * the pad that skips to the start when it would straddle the end.  With
 * rec_total(len) <= capacity / 2 this is always < capacity, so a record fits
 * into an empty ring at any position. */
static inline uint64_t space_needed(const fx_ring *r, uint64_t pos, uint32_t len)
{
    uint64_t off = pos & r->mask;
    uint64_t total = rec_total(len);
    return off + total <= r->capacity ? total : (r->capacity - off) + total;
}

/* head <= tail, at most one capacity apart, both record-aligned. */
static inline bool positions_valid(const fx_ring *r, uint64_t head, uint64_t tail)
{
    return tail - head <= r->capacity && head <= tail &&
           ((head | tail) & (FX_RING_ALIGN - 1)) == 0;
}

/* A relaxed load suffices: the generation is a misuse detector (a handle
 * kept across a reset), not a synchronisation point. */
static inline bool is_stale(const fx_ring *r)
{
    return atomic_load_explicit(&r->shm->generation, memory_order_relaxed) !=
           r->generation;
}

static inline void read_hdr(const fx_ring *r, uint64_t off, rec_hdr *h)
{
    memcpy(h, r->data + off, sizeof *h);
}

static inline void write_hdr(fx_ring *r, uint64_t off, uint32_t len, uint32_t kind)
{
    rec_hdr h = {len, kind};
    memcpy(r->data + off, &h, sizeof h);
}

/* Only the owner of a counter writes it, so load + store is enough and
 * avoids a locked read-modify-write on the hot path. */
static inline void counter_add(_Atomic uint64_t *c, uint64_t n)
{
    uint64_t v = atomic_load_explicit(c, memory_order_relaxed);
    atomic_store_explicit(c, v + n, memory_order_relaxed);
}

/* The fence between the store and the load of each Dekker pair (see the
 * file comment).  FX_RING_UNFENCED_FOR_TESTING removes it: only
 * scripts/ring-stress-qemu builds that way, to show the stall it prevents. */
static inline void dekker_fence(void)
{
#ifndef FX_RING_UNFENCED_FOR_TESTING
    atomic_thread_fence(memory_order_seq_cst);
#endif
}

/* ---- futex ---------------------------------------------------------------- */

/* Not FUTEX_*_PRIVATE: the word is in memory shared between processes, and
 * private futexes key on (mm, address), which differs per process. */
static int futex_wait(_Atomic uint32_t *word, uint32_t expected,
                      const struct timespec *rel)
{
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, rel, NULL, 0);
    return rc == 0 ? 0 : errno;
}

static void futex_wake(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Called right after a store that made progress visible (tail or head).
 * The no-waiter fast path is one fence and one load. */
static void wake_if_waiting(struct wait_line *w)
{
    /* Dekker, waker's half: our progress store, this fence, then the load of
     * the waiter's flag; pairs with the fence in wait_for. */
    dekker_fence();
    if (atomic_load_explicit(&w->waiting, memory_order_relaxed) == 0)
        return;
    /* Clear the flag so later publishes skip the syscall until the waiter
     * arms again; every clear is followed by a bump (see wait_for). */
    if (atomic_exchange_explicit(&w->waiting, 0, memory_order_acq_rel) == 0)
        return;
    /* release: a waiter that reads the new bell value also sees our
     * progress. */
    atomic_fetch_add_explicit(&w->bell, 1, memory_order_release);
    futex_wake(&w->bell);
}

/* Readiness probes used by the wait loop: 1 ready, 0 not yet, or a negative
 * fx_status.  Their load of the peer's position is the second half of the
 * waiter's Dekker pair (after the fence in wait_for); acquire, because the
 * caller goes on to read (or overwrite) the bytes below that position. */
typedef int (*ready_fn)(fx_ring *r, uint32_t arg);

static int readable_now(fx_ring *r, uint32_t unused)
{
    (void)unused;
    if (is_stale(r))
        return -FX_STALE;
    uint64_t pos = r->held ? r->rpos
                           : atomic_load_explicit(&r->shm->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&r->shm->tail, memory_order_acquire);
    if (!positions_valid(r, pos, tail))
        return -FX_CORRUPT;
    r->cached_tail = tail;
    return tail != pos;
}

static int writable_now(fx_ring *r, uint32_t len)
{
    if (is_stale(r))
        return -FX_STALE;
    uint64_t pos = r->staged ? r->wpos
                             : atomic_load_explicit(&r->shm->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&r->shm->head, memory_order_acquire);
    if (!positions_valid(r, head, pos))
        return -FX_CORRUPT;
    r->cached_head = head;
    return pos + space_needed(r, pos, len) - head <= r->capacity;
}

/* Bounded spin, then futex sleeps (each at most FX_RING_MAX_SLEEP_NS) until
 * ready, timeout or signal. */
static fx_status wait_for(fx_ring *r, struct wait_line *w, ready_fn ready, uint32_t arg,
                          int64_t timeout_ns)
{
    int rc = ready(r, arg);
    if (rc != 0)
        return rc > 0 ? FX_OK : (fx_status)-rc;
    if (timeout_ns == 0)
        return FX_TIMEOUT;
    /* The spin pays only when the peer is running on another core and is
     * about to publish; it is bounded so an idle ring costs no CPU. */
    for (uint32_t i = 0; i < r->spin; i++) {
        cpu_relax();
        if ((rc = ready(r, arg)) != 0)
            return rc > 0 ? FX_OK : (fx_status)-rc;
    }
    int64_t deadline = timeout_ns > 0 ? now_ns() + timeout_ns : 0;
    fx_status st = FX_OK;
    bool capped_out = false; /* the last sleep ended at the cap, unsignalled */
    uint32_t seen = 0;
    for (;;) {
        /* Read the bell BEFORE arming.  A waker clears our flag and then
         * bumps the bell; having read the bell first, any such bump makes the
         * futex call return at once (EAGAIN) and we re-arm.  Read after
         * arming, a clear+bump could fall in between: we would see the new
         * bell, sleep with the flag cleared, and no later publish would wake
         * us (tests/stress/ring_stress.c caught exactly that).
         * acquire: pairs with the release bump in wake_if_waiting. */
        uint32_t bell = atomic_load_explicit(&w->bell, memory_order_acquire);
        bool unsignalled = capped_out && bell == seen;
        seen = bell;
        atomic_store_explicit(&w->waiting, 1, memory_order_relaxed);
        /* Dekker, waiter's half: the flag store, this fence, then the load of
         * the peer's position in ready(); pairs with the fence in
         * wake_if_waiting, so the peer sees our flag or we see its progress. */
        dekker_fence();
        if ((rc = ready(r, arg)) != 0) {
            if (unsignalled && rc > 0)
                counter_add(&w->unsignalled, 1); /* a lost wake-up, caught by the cap */
            st = rc > 0 ? FX_OK : (fx_status)-rc;
            break;
        }
        int64_t nap = FX_RING_MAX_SLEEP_NS;
        if (timeout_ns > 0) {
            int64_t left = deadline - now_ns();
            if (left <= 0) {
                st = FX_TIMEOUT;
                break;
            }
            if (left < nap)
                nap = left;
        }
        struct timespec rel = {nap / 1000000000, nap % 1000000000};
        counter_add(&w->sleeps, 1);
        /* The kernel sleeps only while *bell == seen, so a ring between our
         * load of `seen` and this call is never lost. */
        int err = futex_wait(&w->bell, seen, &rel);
        if (err == EINTR) {
            st = FX_INTERRUPTED;
            break;
        }
        /* Woken, EAGAIN or timed out: re-check.  A timeout at the cap (not at
         * the caller's deadline) with the bell unchanged is unsignalled. */
        capped_out = err == ETIMEDOUT && nap == FX_RING_MAX_SLEEP_NS;
    }
    atomic_store_explicit(&w->waiting, 0, memory_order_relaxed);
    return st;
}

/* ---- setup ---------------------------------------------------------------- */

size_t fx_ring_required_size(uint32_t capacity)
{
    return valid_capacity(capacity) ? (size_t)FX_RING_HEADER_SIZE + capacity : 0;
}

uint32_t fx_ring_max_record(const fx_ring *r)
{
    return (uint32_t)(r->capacity / 2 - REC_HDR);
}

void fx_ring_set_spin(fx_ring *r, uint32_t spin)
{
    r->spin = spin > FX_RING_MAX_SPIN ? FX_RING_MAX_SPIN : spin;
}

/* Point a handle at a ring whose positions start at 0 (attach then moves
 * the caches to the live positions). */
static void handle_bind(fx_ring *r, void *mem, uint64_t capacity, uint32_t generation)
{
    uint32_t spin = r->spin;
    memset(r, 0, sizeof *r);
    r->shm = mem;
    r->data = (unsigned char *)mem + FX_RING_HEADER_SIZE;
    r->capacity = capacity;
    r->mask = capacity - 1;
    r->generation = generation;
    r->spin = spin;
    /* cached_tail == head means "nothing readable": the first peek loads
     * tail; cached_head <= head only underestimates free space. */
}

static void wait_line_clear(struct wait_line *w)
{
    atomic_store_explicit(&w->bell, 0, memory_order_relaxed);
    atomic_store_explicit(&w->waiting, 0, memory_order_relaxed);
    atomic_store_explicit(&w->sleeps, 0, memory_order_relaxed);
    atomic_store_explicit(&w->unsignalled, 0, memory_order_relaxed);
}

static bool mem_ok(const void *mem)
{
    /* 8-byte alignment keeps every atomic naturally aligned (required for
     * lock-free access); callers should hand page-aligned shared memory. */
    return mem != NULL && ((uintptr_t)mem & 7u) == 0;
}

fx_status fx_ring_init(fx_ring *r, void *mem, size_t size, uint32_t capacity)
{
    if (r == NULL || !mem_ok(mem) || !valid_capacity(capacity) ||
        size < fx_ring_required_size(capacity))
        return FX_BAD_ARG;
    struct fx_ring_shared *s = mem;
    /* Unpublish first so nobody attaches to a half-written header.  The old
     * generation may be garbage in fresh memory; any value works as long as
     * it changes, which is what lets stale handles notice a re-format. */
    atomic_store_explicit(&s->magic, 0, memory_order_relaxed);
    uint32_t generation = atomic_load_explicit(&s->generation, memory_order_relaxed) + 1;
    s->version = FX_VERSION;
    s->capacity = capacity;
    s->header_size = FX_RING_HEADER_SIZE;
    atomic_store_explicit(&s->generation, generation, memory_order_relaxed);
    atomic_store_explicit(&s->tail, 0, memory_order_relaxed);
    atomic_store_explicit(&s->pushed, 0, memory_order_relaxed);
    atomic_store_explicit(&s->head, 0, memory_order_relaxed);
    atomic_store_explicit(&s->popped, 0, memory_order_relaxed);
    wait_line_clear(&s->data_wait);
    wait_line_clear(&s->space_wait);
    /* release: whoever acquire-loads the magic sees the whole header. */
    atomic_store_explicit(&s->magic, FX_MAGIC, memory_order_release);
    r->spin = FX_RING_DEFAULT_SPIN;
    handle_bind(r, mem, capacity, generation);
    return FX_OK;
}

fx_status fx_ring_attach(fx_ring *r, void *mem, size_t size)
{
    if (r == NULL || !mem_ok(mem))
        return FX_BAD_ARG;
    if (size < FX_RING_HEADER_SIZE)
        return FX_CORRUPT; /* too small to be a ring at all */
    struct fx_ring_shared *s = mem;
    /* acquire: pairs with the release store of the magic in fx_ring_init. */
    if (atomic_load_explicit(&s->magic, memory_order_acquire) != FX_MAGIC ||
        s->version != FX_VERSION || s->header_size != FX_RING_HEADER_SIZE ||
        !valid_capacity(s->capacity) ||
        size < (size_t)FX_RING_HEADER_SIZE + s->capacity)
        return FX_CORRUPT;
    r->spin = FX_RING_DEFAULT_SPIN;
    handle_bind(r, mem, s->capacity, atomic_load_explicit(&s->generation, memory_order_relaxed));
    /* Positions move if a peer is live; a few re-reads separate "moving"
     * from "broken".  Head first: tail only grows, so tail >= head then. */
    for (int attempt = 0; attempt < 4; attempt++) {
        uint64_t head = atomic_load_explicit(&s->head, memory_order_acquire);
        uint64_t tail = atomic_load_explicit(&s->tail, memory_order_acquire);
        if (positions_valid(r, head, tail)) {
            r->cached_head = head;
            r->cached_tail = head;
            return FX_OK;
        }
    }
    return FX_CORRUPT;
}

fx_status fx_ring_reset(fx_ring *r)
{
    if (r == NULL || r->shm == NULL)
        return FX_BAD_ARG;
    struct fx_ring_shared *s = r->shm;
    /* Generation first, so a stale handle fails instead of reading the
     * zeroed positions as a fresh stream. */
    uint32_t generation = atomic_load_explicit(&s->generation, memory_order_relaxed) + 1;
    atomic_store_explicit(&s->generation, generation, memory_order_seq_cst);
    atomic_store_explicit(&s->head, 0, memory_order_relaxed);
    atomic_store_explicit(&s->tail, 0, memory_order_relaxed);
    atomic_store_explicit(&s->pushed, 0, memory_order_relaxed);
    atomic_store_explicit(&s->popped, 0, memory_order_relaxed);
    atomic_store_explicit(&s->data_wait.waiting, 0, memory_order_relaxed);
    atomic_store_explicit(&s->space_wait.waiting, 0, memory_order_relaxed);
    atomic_store_explicit(&s->data_wait.sleeps, 0, memory_order_relaxed);
    atomic_store_explicit(&s->space_wait.sleeps, 0, memory_order_relaxed);
    atomic_store_explicit(&s->data_wait.unsignalled, 0, memory_order_relaxed);
    atomic_store_explicit(&s->space_wait.unsignalled, 0, memory_order_relaxed);
    /* A sleeper still parked here (a stale handle) is kicked: it re-checks,
     * sees the new generation and returns FX_STALE. */
    atomic_fetch_add_explicit(&s->data_wait.bell, 1, memory_order_seq_cst);
    atomic_fetch_add_explicit(&s->space_wait.bell, 1, memory_order_seq_cst);
    futex_wake(&s->data_wait.bell);
    futex_wake(&s->space_wait.bell);
    handle_bind(r, s, r->capacity, generation);
    return FX_OK;
}

/* ---- producer ------------------------------------------------------------- */

/* FX_OK if `need` bytes fit at `pos`; refreshes the cached head only when the
 * cached view says no (the common case touches no consumer cache line). */
static fx_status producer_room(fx_ring *r, uint64_t pos, uint64_t need)
{
    if (pos + need - r->cached_head <= r->capacity)
        return FX_OK;
    /* acquire: the consumer finished reading these bytes before its release
     * store of head; we must not overwrite them earlier. */
    uint64_t head = atomic_load_explicit(&r->shm->head, memory_order_acquire);
    if (!positions_valid(r, head, pos))
        return FX_CORRUPT;
    r->cached_head = head;
    return pos + need - head <= r->capacity ? FX_OK : FX_FULL;
}

fx_status fx_ring_reserve(fx_ring *r, uint32_t len, void **payload)
{
    if (len > fx_ring_max_record(r))
        return FX_TOO_BIG;
    if (is_stale(r))
        return FX_STALE;
    if (r->staged == 0) /* our own counter: nobody else writes it */
        r->wpos = atomic_load_explicit(&r->shm->tail, memory_order_relaxed);
    if (r->wpos & (FX_RING_ALIGN - 1)) /* see fx_ring_peek */
        return FX_CORRUPT;
    fx_status st = producer_room(r, r->wpos, space_needed(r, r->wpos, len));
    if (st != FX_OK)
        return st;
    uint64_t off = r->wpos & r->mask;
    if (off + rec_total(len) > r->capacity) {
        /* Pad to the end so the payload is contiguous; off is a multiple of
         * 8 below capacity, so the pad header itself always fits. */
        write_hdr(r, off, (uint32_t)(r->capacity - off - REC_HDR), REC_PAD);
        r->wpos += r->capacity - off;
        off = 0;
    }
    write_hdr(r, off, len, REC_DATA);
    *payload = r->data + off + REC_HDR;
    r->wpos += rec_total(len);
    r->staged++;
    return FX_OK;
}

void fx_ring_publish(fx_ring *r)
{
    if (r->staged == 0)
        return;
    /* release: the record bytes become visible before the new tail.  The
     * fence in wake_if_waiting orders this store before the load of the
     * consumer's flag (store->load, see the file comment). */
    atomic_store_explicit(&r->shm->tail, r->wpos, memory_order_release);
    counter_add(&r->shm->pushed, r->staged);
    r->staged = 0;
    wake_if_waiting(&r->shm->data_wait);
}

void fx_ring_unstage(fx_ring *r)
{
    /* Bytes past tail are invisible to the consumer, so forgetting the
     * staged position is all it takes; the next reserve reloads tail. */
    r->staged = 0;
}

fx_status fx_ring_try_push(fx_ring *r, const void *data, uint32_t len)
{
    void *payload;
    fx_status st = fx_ring_reserve(r, len, &payload);
    if (st != FX_OK)
        return st;
    if (len)
        memcpy(payload, data, len);
    fx_ring_publish(r);
    return FX_OK;
}

fx_status fx_ring_wait_writable(fx_ring *r, uint32_t len, int64_t timeout_ns)
{
    if (len > fx_ring_max_record(r))
        return FX_TOO_BIG;
    return wait_for(r, &r->shm->space_wait, writable_now, len, timeout_ns);
}

fx_status fx_ring_push_wait(fx_ring *r, const void *data, uint32_t len, int64_t timeout_ns)
{
    int64_t deadline = timeout_ns > 0 ? now_ns() + timeout_ns : 0;
    for (;;) {
        fx_status st = fx_ring_try_push(r, data, len);
        if (st != FX_FULL)
            return st;
        int64_t left = timeout_ns;
        if (timeout_ns > 0 && (left = deadline - now_ns()) <= 0)
            return FX_TIMEOUT;
        st = fx_ring_wait_writable(r, len, left);
        if (st != FX_OK)
            return st;
    }
}

/* ---- consumer ------------------------------------------------------------- */

/* Bytes published beyond `pos`; reloads tail only when the cache says none.
 * A negative value is a -fx_status. */
static int64_t consumer_avail(fx_ring *r, uint64_t pos)
{
    uint64_t avail = r->cached_tail - pos;
    if (avail != 0 && avail <= r->capacity)
        return (int64_t)avail;
    /* acquire: pairs with the producer's store of tail, so the record bytes
     * below tail are visible before we read them. */
    uint64_t tail = atomic_load_explicit(&r->shm->tail, memory_order_acquire);
    if (!positions_valid(r, pos, tail))
        return -FX_CORRUPT;
    r->cached_tail = tail;
    return (int64_t)(tail - pos);
}

fx_status fx_ring_peek(fx_ring *r, const void **payload, uint32_t *len)
{
    if (is_stale(r))
        return FX_STALE;
    if (r->held == 0) /* our own counter: nobody else writes it */
        r->rpos = atomic_load_explicit(&r->shm->head, memory_order_relaxed);
    r->peeked = 0;
    /* An unaligned position (a scribbled header) would put the 8-byte record
     * header across the end of the buffer. */
    if (r->rpos & (FX_RING_ALIGN - 1))
        return FX_CORRUPT;
    int64_t avail = consumer_avail(r, r->rpos);
    if (avail <= 0)
        return avail == 0 ? FX_EMPTY : (fx_status)-avail;
    /* Everything below is read from shared memory and checked before use:
     * a corrupt word must give FX_CORRUPT, never an out-of-bounds access. */
    uint64_t off = r->rpos & r->mask;
    rec_hdr h;
    read_hdr(r, off, &h);
    if (h.kind == REC_PAD) {
        uint64_t skip = r->capacity - off;
        /* A pad runs exactly to the end and is published with the record
         * after it, so that record's header must already be there. */
        if (h.len != skip - REC_HDR || (uint64_t)avail < skip + REC_HDR)
            return FX_CORRUPT;
        r->rpos += skip;
        avail -= (int64_t)skip;
        off = 0;
        read_hdr(r, off, &h);
    }
    if (h.kind != REC_DATA || h.len > fx_ring_max_record(r) ||
        off + rec_total(h.len) > r->capacity || rec_total(h.len) > (uint64_t)avail)
        return FX_CORRUPT;
    *payload = r->data + off + REC_HDR;
    *len = h.len;
    r->peek_next = r->rpos + rec_total(h.len);
    r->peeked = 1;
    return FX_OK;
}

fx_status fx_ring_advance(fx_ring *r)
{
    if (!r->peeked)
        return FX_BAD_ARG;
    r->rpos = r->peek_next;
    r->peeked = 0;
    r->held++;
    return FX_OK;
}

void fx_ring_release(fx_ring *r)
{
    if (r->held == 0)
        return;
    /* release: our reads of the records are done before the producer may
     * reuse their bytes.  The fence in wake_if_waiting orders this store
     * before the load of the producer's flag (store->load, see the file
     * comment). */
    atomic_store_explicit(&r->shm->head, r->rpos, memory_order_release);
    counter_add(&r->shm->popped, r->held);
    r->held = 0;
    wake_if_waiting(&r->shm->space_wait);
}

void fx_ring_unread(fx_ring *r)
{
    /* head was not moved, so the next peek starts from it again. */
    r->held = 0;
    r->peeked = 0;
}

fx_status fx_ring_consume(fx_ring *r)
{
    fx_status st = fx_ring_advance(r);
    if (st == FX_OK)
        fx_ring_release(r);
    return st;
}

fx_status fx_ring_try_pop(fx_ring *r, void *out, uint32_t cap, uint32_t *len)
{
    const void *payload;
    fx_status st = fx_ring_peek(r, &payload, len);
    if (st != FX_OK)
        return st;
    if (*len > cap) {
        r->peeked = 0;
        return FX_TOO_BIG;
    }
    memcpy(out, payload, *len);
    return fx_ring_consume(r);
}

fx_status fx_ring_wait_readable(fx_ring *r, int64_t timeout_ns)
{
    return wait_for(r, &r->shm->data_wait, readable_now, 0, timeout_ns);
}

/* ---- observation ---------------------------------------------------------- */

void fx_ring_stats_get(const fx_ring *r, fx_ring_stats *out)
{
    const struct fx_ring_shared *s = r->shm;
    out->capacity = r->capacity;
    out->head = atomic_load_explicit(&s->head, memory_order_acquire);
    out->tail = atomic_load_explicit(&s->tail, memory_order_acquire);
    out->pushed = atomic_load_explicit(&s->pushed, memory_order_relaxed);
    out->popped = atomic_load_explicit(&s->popped, memory_order_relaxed);
    out->producer_sleeps = atomic_load_explicit(&s->space_wait.sleeps, memory_order_relaxed);
    out->consumer_sleeps = atomic_load_explicit(&s->data_wait.sleeps, memory_order_relaxed);
    out->producer_unsignalled =
        atomic_load_explicit(&s->space_wait.unsignalled, memory_order_relaxed);
    out->consumer_unsignalled =
        atomic_load_explicit(&s->data_wait.unsignalled, memory_order_relaxed);
    out->generation = atomic_load_explicit(&s->generation, memory_order_relaxed);
    out->consumer_waiting = atomic_load_explicit(&s->data_wait.waiting, memory_order_relaxed);
    out->producer_waiting = atomic_load_explicit(&s->space_wait.waiting, memory_order_relaxed);
}

uint64_t fx_ring_used_bytes(const fx_ring *r)
{
    /* Head first: tail only grows, so the difference is never negative for
     * a healthy ring; clamp anyway so a corrupt header cannot mislead. */
    uint64_t head = atomic_load_explicit(&r->shm->head, memory_order_acquire);
    uint64_t tail = atomic_load_explicit(&r->shm->tail, memory_order_acquire);
    uint64_t used = tail - head;
    return tail < head ? 0 : (used > r->capacity ? r->capacity : used);
}

uint64_t fx_ring_free_bytes(const fx_ring *r)
{
    return r->capacity - fx_ring_used_bytes(r);
}
