/*
 * fastext._native._ring: thin CPython binding over ring.c.
 *
 * A Ring holds a writable buffer (mmap, memoryview of shared memory,
 * bytearray) for its whole life; it never accepts an address.  Every wait
 * runs with the GIL released.  FX_FULL / FX_EMPTY are ordinary results
 * (False / None) on the hot path; the other statuses become exceptions.
 *
 * Import only through fastext.ring.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <time.h>

#include "ring.h"

typedef struct {
    PyObject *ring_type;
    PyObject *ring_error;
    PyObject *ring_corrupt;
    PyObject *record_too_large;
} module_state;

typedef struct {
    PyObject_HEAD
    fx_ring ring;
    Py_buffer view;
    int open;      /* view is held and ring is attached                  */
    int producing; /* a producer call is running (maybe without the GIL) */
    int consuming; /* a consumer call is running (maybe without the GIL) */
} RingObject;

static inline module_state *state_of_type(PyTypeObject *tp)
{
    return (module_state *)PyType_GetModuleState(tp);
}

static inline module_state *state_of(RingObject *self)
{
    return state_of_type(Py_TYPE(self));
}

/* ---- errors and arguments ------------------------------------------------- */

static PyObject *raise_status(module_state *st, fx_status s, const char *what)
{
    switch (s) {
    case FX_CORRUPT:
        PyErr_Format(st->ring_corrupt, "%s: ring state failed validation "
                     "(corrupt or foreign buffer)", what);
        break;
    case FX_TOO_BIG:
        PyErr_Format(st->record_too_large, "%s: record larger than max_record", what);
        break;
    case FX_STALE:
        PyErr_Format(st->ring_error, "%s: the ring was reset after this handle "
                     "attached; attach again", what);
        break;
    case FX_BAD_ARG:
        PyErr_Format(PyExc_ValueError, "%s: invalid argument", what);
        break;
    default:
        PyErr_Format(st->ring_error, "%s: %s", what, fx_status_name(s));
        break;
    }
    return NULL;
}

static int64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* timeout (seconds, None = no limit) -> absolute deadline in ns, -1 = none. */
static int parse_deadline(PyObject *timeout, int64_t *deadline)
{
    if (timeout == NULL || timeout == Py_None) {
        *deadline = -1;
        return 0;
    }
    double secs = PyFloat_AsDouble(timeout);
    if (secs == -1.0 && PyErr_Occurred())
        return -1;
    if (isnan(secs) || secs < 0) {
        PyErr_SetString(PyExc_ValueError, "timeout must be a non-negative number or None");
        return -1;
    }
    /* About 290 years: longer is "no limit" for every practical purpose. */
    *deadline = secs > 9.0e9 ? -1 : monotonic_ns() + (int64_t)(secs * 1e9);
    return 0;
}

static int check_open(RingObject *self)
{
    if (!self->open) {
        PyErr_SetString(PyExc_ValueError, "operation on a closed Ring");
        return -1;
    }
    return 0;
}

/* A ring has one producer and one consumer.  A Python thread blocked in a
 * wait has released the GIL, so a second thread could otherwise enter the
 * same role and break the single-producer/single-consumer contract. */
static int enter_role(RingObject *self, int *flag, const char *role)
{
    if (check_open(self) < 0)
        return -1;
    if (*flag) {
        PyErr_Format(state_of(self)->ring_error,
                     "another thread is already using this Ring as its %s "
                     "(a ring has exactly one)", role);
        return -1;
    }
    *flag = 1;
    return 0;
}

/* Borrow a contiguous byte view of `obj`.  bytes are read directly (the hot
 * path); everything else goes through the buffer protocol. */
typedef struct {
    const char *ptr;
    Py_ssize_t len;
    Py_buffer view;
    int has_view;
} bytes_arg;

static int bytes_arg_get(PyObject *obj, bytes_arg *a)
{
    a->has_view = 0;
    if (PyBytes_Check(obj)) {
        a->ptr = PyBytes_AS_STRING(obj);
        a->len = PyBytes_GET_SIZE(obj);
        return 0;
    }
    if (PyObject_GetBuffer(obj, &a->view, PyBUF_SIMPLE) < 0)
        return -1;
    a->has_view = 1;
    a->ptr = a->view.buf;
    a->len = a->view.len;
    return 0;
}

static void bytes_arg_release(bytes_arg *a)
{
    if (a->has_view)
        PyBuffer_Release(&a->view);
    a->has_view = 0;
}

/* ---- waiting with the GIL released ---------------------------------------- */

/* 1: ready, 0: deadline passed, -1: exception set.  A signal interrupts the
 * futex (FX_INTERRUPTED); we run Python's handlers and keep waiting unless
 * one of them raised (e.g. KeyboardInterrupt). */
static int wait_ready(RingObject *self, int producer, uint32_t len, int64_t deadline)
{
    for (;;) {
        int64_t left = -1;
        if (deadline >= 0) {
            left = deadline - monotonic_ns();
            if (left < 0)
                left = 0; /* one last check, no sleep */
        }
        fx_status s;
        Py_BEGIN_ALLOW_THREADS
        s = producer ? fx_ring_wait_writable(&self->ring, len, left)
                     : fx_ring_wait_readable(&self->ring, left);
        Py_END_ALLOW_THREADS
        if (s == FX_OK)
            return 1;
        if (s == FX_TIMEOUT)
            return 0;
        if (s != FX_INTERRUPTED) {
            raise_status(state_of(self), s, producer ? "wait_writable" : "wait_readable");
            return -1;
        }
        if (PyErr_CheckSignals() < 0)
            return -1;
    }
}

/* ---- construction ---------------------------------------------------------- */

static PyObject *ring_make(PyTypeObject *type, PyObject *buf, long long capacity,
                           long long spin)
{
    module_state *st = state_of_type(type);
    if (spin < 0 || spin > FX_RING_MAX_SPIN)
        return PyErr_Format(PyExc_ValueError, "spin must be in [0, %u]", FX_RING_MAX_SPIN);
    RingObject *self = (RingObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (PyObject_GetBuffer(buf, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    fx_status s;
    if (capacity >= 0) {
        s = (capacity > UINT32_MAX)
                ? FX_BAD_ARG
                : fx_ring_init(&self->ring, self->view.buf, (size_t)self->view.len,
                               (uint32_t)capacity);
    } else {
        s = fx_ring_attach(&self->ring, self->view.buf, (size_t)self->view.len);
    }
    if (s != FX_OK) {
        PyBuffer_Release(&self->view);
        Py_DECREF(self);
        if (s == FX_BAD_ARG)
            return PyErr_Format(PyExc_ValueError,
                                "cannot %s a ring here: the buffer must be 8-byte aligned and "
                                "hold required_size(capacity) bytes, capacity a power of two "
                                "in [%u, %u]",
                                capacity >= 0 ? "format" : "attach", FX_RING_MIN_CAPACITY,
                                FX_RING_MAX_CAPACITY);
        return raise_status(st, s, "attach");
    }
    fx_ring_set_spin(&self->ring, (uint32_t)spin);
    self->open = 1;
    return (PyObject *)self;
}

static PyObject *Ring_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"buffer", "spin", NULL};
    PyObject *buf;
    long long spin = FX_RING_DEFAULT_SPIN;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$L:Ring", kwlist, &buf, &spin))
        return NULL;
    return ring_make(type, buf, -1, spin);
}

static PyObject *Ring_init_cls(PyObject *cls, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"buffer", "capacity", "spin", NULL};
    PyObject *buf;
    long long capacity, spin = FX_RING_DEFAULT_SPIN;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OL|$L:init", kwlist, &buf, &capacity,
                                     &spin))
        return NULL;
    if (capacity < 0)
        return PyErr_Format(PyExc_ValueError, "capacity must be positive");
    return ring_make((PyTypeObject *)cls, buf, capacity, spin);
}

static void ring_release_view(RingObject *self)
{
    if (self->open) {
        self->open = 0;
        PyBuffer_Release(&self->view);
    }
}

static void Ring_dealloc(RingObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    ring_release_view(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *Ring_close(RingObject *self, PyObject *unused)
{
    (void)unused;
    if (self->producing || self->consuming) {
        PyErr_SetString(state_of(self)->ring_error,
                        "cannot close a Ring while another thread is using it");
        return NULL;
    }
    ring_release_view(self);
    Py_RETURN_NONE;
}

static PyObject *Ring_enter(RingObject *self, PyObject *unused)
{
    (void)unused;
    if (check_open(self) < 0)
        return NULL;
    return Py_NewRef(self);
}

static PyObject *Ring_exit(RingObject *self, PyObject *args)
{
    (void)args;
    return Ring_close(self, NULL);
}

static PyObject *Ring_reduce(RingObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    PyErr_SetString(PyExc_TypeError, "a Ring cannot be pickled: pass the shared-memory "
                                     "name to the other process and attach there");
    return NULL;
}

static PyObject *Ring_reset(RingObject *self, PyObject *unused)
{
    (void)unused;
    if (check_open(self) < 0)
        return NULL;
    if (self->producing || self->consuming) {
        PyErr_SetString(state_of(self)->ring_error,
                        "cannot reset a Ring while another thread is using it");
        return NULL;
    }
    fx_status s = fx_ring_reset(&self->ring);
    if (s != FX_OK)
        return raise_status(state_of(self), s, "reset");
    Py_RETURN_NONE;
}

/* ---- producer -------------------------------------------------------------- */

static int check_len(RingObject *self, Py_ssize_t len)
{
    if ((unsigned long long)len > fx_ring_max_record(&self->ring)) {
        PyErr_Format(state_of(self)->record_too_large,
                     "record of %zd bytes exceeds max_record (%u) of this ring", len,
                     fx_ring_max_record(&self->ring));
        return -1;
    }
    return 0;
}

/* 1 pushed, 0 full, -1 exception. */
static int push_one(RingObject *self, const bytes_arg *a)
{
    if (check_len(self, a->len) < 0)
        return -1;
    fx_status s = fx_ring_try_push(&self->ring, a->ptr, (uint32_t)a->len);
    if (s == FX_OK)
        return 1;
    if (s == FX_FULL)
        return 0;
    raise_status(state_of(self), s, "push");
    return -1;
}

static PyObject *Ring_try_push(RingObject *self, PyObject *data)
{
    bytes_arg a;
    if (enter_role(self, &self->producing, "producer") < 0)
        return NULL;
    int rc = -1;
    if (bytes_arg_get(data, &a) == 0) {
        rc = push_one(self, &a);
        bytes_arg_release(&a);
    }
    self->producing = 0;
    return rc < 0 ? NULL : PyBool_FromLong(rc);
}

static PyObject *Ring_push(RingObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"data", "timeout", NULL};
    PyObject *data, *timeout = Py_None;
    int64_t deadline;
    bytes_arg a;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:push", kwlist, &data, &timeout) ||
        parse_deadline(timeout, &deadline) < 0)
        return NULL;
    if (enter_role(self, &self->producing, "producer") < 0)
        return NULL;
    int rc = -1;
    if (bytes_arg_get(data, &a) == 0) {
        /* The view stays held while we wait: the payload cannot change size. */
        while ((rc = push_one(self, &a)) == 0) {
            int w = wait_ready(self, 1, (uint32_t)a.len, deadline);
            if (w <= 0) {
                rc = w;
                break;
            }
        }
        bytes_arg_release(&a);
    }
    self->producing = 0;
    return rc < 0 ? NULL : PyBool_FromLong(rc);
}

/* Stage one item; FX_OK, FX_FULL, or FX_BAD_ARG with a Python exception set
 * (any other status is returned for the caller to raise). */
static fx_status stage_one(RingObject *self, PyObject *item)
{
    bytes_arg a;
    void *dst;
    if (bytes_arg_get(item, &a) < 0)
        return FX_BAD_ARG;
    fx_status s = FX_BAD_ARG;
    if (check_len(self, a.len) == 0) {
        s = fx_ring_reserve(&self->ring, (uint32_t)a.len, &dst);
        if (s == FX_OK && a.len)
            memcpy(dst, a.ptr, (size_t)a.len);
    }
    bytes_arg_release(&a);
    return s;
}

/* Stage as many leading items as fit and publish them with one store and at
 * most one wake.  A bad item raises before anything becomes visible. */
static PyObject *Ring_push_many(RingObject *self, PyObject *items)
{
    PyObject *seq = PySequence_Fast(items, "push_many expects a sequence of bytes-like objects");
    if (seq == NULL)
        return NULL;
    if (enter_role(self, &self->producing, "producer") < 0) {
        Py_DECREF(seq);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), done = 0;
    PyObject **vec = PySequence_Fast_ITEMS(seq);
    fx_status s = FX_OK;
    while (done < n && (s = stage_one(self, vec[done])) == FX_OK)
        done++;
    PyObject *result = NULL;
    if (s == FX_OK || s == FX_FULL) {
        fx_ring_publish(&self->ring);
        result = PyLong_FromSsize_t(done);
    } else {
        fx_ring_unstage(&self->ring);
        if (s != FX_BAD_ARG)
            raise_status(state_of(self), s, "push_many");
    }
    self->producing = 0;
    Py_DECREF(seq);
    return result;
}

static PyObject *Ring_wait_writable(RingObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"size", "timeout", NULL};
    Py_ssize_t size;
    PyObject *timeout = Py_None;
    int64_t deadline;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n|O:wait_writable", kwlist, &size,
                                     &timeout) ||
        parse_deadline(timeout, &deadline) < 0)
        return NULL;
    if (size < 0)
        return PyErr_Format(PyExc_ValueError, "size must be non-negative");
    if (enter_role(self, &self->producing, "producer") < 0)
        return NULL;
    int w = check_len(self, size) < 0 ? -1 : wait_ready(self, 1, (uint32_t)size, deadline);
    self->producing = 0;
    return w < 0 ? NULL : PyBool_FromLong(w);
}

/* ---- consumer -------------------------------------------------------------- */

/* 1 popped into *out, 0 empty, -1 exception.  With `hold`, the record is
 * stepped over but its space is handed back only by fx_ring_release. */
static int pop_one(RingObject *self, PyObject **out, int hold)
{
    const void *payload;
    uint32_t len;
    fx_status s = fx_ring_peek(&self->ring, &payload, &len);
    if (s == FX_EMPTY)
        return 0;
    if (s != FX_OK) {
        raise_status(state_of(self), s, "pop");
        return -1;
    }
    /* Copy out before handing the space back: the producer may overwrite it
     * the moment head moves. */
    *out = PyBytes_FromStringAndSize(payload, len);
    if (*out == NULL)
        return -1; /* record stays in the ring */
    if (hold)
        fx_ring_advance(&self->ring);
    else
        fx_ring_consume(&self->ring);
    return 1;
}

static PyObject *Ring_try_pop(RingObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *item = NULL;
    if (enter_role(self, &self->consuming, "consumer") < 0)
        return NULL;
    int rc = pop_one(self, &item, 0);
    self->consuming = 0;
    if (rc < 0)
        return NULL;
    return rc ? item : Py_NewRef(Py_None);
}

static PyObject *Ring_pop(RingObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = Py_None, *item = NULL;
    int64_t deadline;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:pop", kwlist, &timeout) ||
        parse_deadline(timeout, &deadline) < 0)
        return NULL;
    if (enter_role(self, &self->consuming, "consumer") < 0)
        return NULL;
    int rc;
    while ((rc = pop_one(self, &item, 0)) == 0) {
        int w = wait_ready(self, 0, 0, deadline);
        if (w <= 0) {
            rc = w;
            break;
        }
    }
    self->consuming = 0;
    if (rc < 0)
        return NULL;
    return rc ? item : Py_NewRef(Py_None);
}

/* Read up to max_items records already published, hand their space back
 * with one store.  On error nothing is consumed. */
static int drain(RingObject *self, PyObject *list, Py_ssize_t max_items)
{
    while (PyList_GET_SIZE(list) < max_items) {
        PyObject *item;
        int rc = pop_one(self, &item, 1);
        if (rc == 0)
            break;
        if (rc < 0 || PyList_Append(list, item) < 0) {
            if (rc > 0)
                Py_DECREF(item);
            fx_ring_unread(&self->ring);
            return -1;
        }
        Py_DECREF(item);
    }
    fx_ring_release(&self->ring);
    return 0;
}

static PyObject *Ring_pop_many(RingObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"max_items", "timeout", NULL};
    Py_ssize_t max_items;
    PyObject *timeout = Py_None;
    int64_t deadline;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n|O:pop_many", kwlist, &max_items,
                                     &timeout) ||
        parse_deadline(timeout, &deadline) < 0)
        return NULL;
    if (max_items < 1)
        return PyErr_Format(PyExc_ValueError, "max_items must be at least 1");
    if (enter_role(self, &self->consuming, "consumer") < 0)
        return NULL;
    PyObject *list = PyList_New(0);
    int ok = list != NULL && drain(self, list, max_items) == 0;
    /* One wait, then one more drain: callers loop; we never spin here. */
    if (ok && PyList_GET_SIZE(list) == 0) {
        int w = wait_ready(self, 0, 0, deadline);
        ok = w >= 0 && (w == 0 || drain(self, list, max_items) == 0);
    }
    self->consuming = 0;
    if (!ok) {
        Py_XDECREF(list);
        return NULL;
    }
    return list;
}

static PyObject *Ring_wait_readable(RingObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = Py_None;
    int64_t deadline;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:wait_readable", kwlist, &timeout) ||
        parse_deadline(timeout, &deadline) < 0)
        return NULL;
    if (enter_role(self, &self->consuming, "consumer") < 0)
        return NULL;
    int w = wait_ready(self, 0, 0, deadline);
    self->consuming = 0;
    return w < 0 ? NULL : PyBool_FromLong(w);
}

/* ---- observation ----------------------------------------------------------- */

static PyObject *Ring_stats(RingObject *self, PyObject *unused)
{
    (void)unused;
    if (check_open(self) < 0)
        return NULL;
    fx_ring_stats s;
    fx_ring_stats_get(&self->ring, &s);
    return Py_BuildValue(
        "{sKsKsKsKsKsKsKsKsKsIsIsI}", "capacity", (unsigned long long)s.capacity, "head",
        (unsigned long long)s.head, "tail", (unsigned long long)s.tail, "pushed",
        (unsigned long long)s.pushed, "popped", (unsigned long long)s.popped,
        "producer_sleeps", (unsigned long long)s.producer_sleeps, "consumer_sleeps",
        (unsigned long long)s.consumer_sleeps, "producer_unsignalled",
        (unsigned long long)s.producer_unsignalled, "consumer_unsignalled",
        (unsigned long long)s.consumer_unsignalled, "generation", s.generation,
        "consumer_waiting", s.consumer_waiting, "producer_waiting", s.producer_waiting);
}

enum { P_CAPACITY, P_MAX_RECORD, P_USED, P_FREE, P_PUSHED, P_POPPED, P_HEAD, P_TAIL, P_SPIN };

static PyObject *Ring_get(RingObject *self, void *which)
{
    if (check_open(self) < 0)
        return NULL;
    fx_ring_stats s;
    fx_ring_stats_get(&self->ring, &s);
    unsigned long long v = 0;
    switch ((int)(intptr_t)which) {
    case P_CAPACITY: v = s.capacity; break;
    case P_MAX_RECORD: v = fx_ring_max_record(&self->ring); break;
    case P_USED: v = fx_ring_used_bytes(&self->ring); break;
    case P_FREE: v = fx_ring_free_bytes(&self->ring); break;
    case P_PUSHED: v = s.pushed; break;
    case P_POPPED: v = s.popped; break;
    case P_HEAD: v = s.head; break;
    case P_TAIL: v = s.tail; break;
    case P_SPIN: v = self->ring.spin; break;
    }
    return PyLong_FromUnsignedLongLong(v);
}

static int Ring_set_spin(RingObject *self, PyObject *value, void *unused)
{
    (void)unused;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete spin");
        return -1;
    }
    long spin = PyLong_AsLong(value);
    if (spin == -1 && PyErr_Occurred())
        return -1;
    if (spin < 0 || spin > FX_RING_MAX_SPIN) {
        PyErr_Format(PyExc_ValueError, "spin must be in [0, %u]", FX_RING_MAX_SPIN);
        return -1;
    }
    fx_ring_set_spin(&self->ring, (uint32_t)spin);
    return 0;
}

static PyObject *Ring_get_closed(RingObject *self, void *unused)
{
    (void)unused;
    return PyBool_FromLong(!self->open);
}

#define PROP(name, id, doc) {name, (getter)Ring_get, NULL, doc, (void *)(intptr_t)(id)}

static PyGetSetDef Ring_getset[] = {
    PROP("capacity", P_CAPACITY, "Bytes in the data area (a power of two)."),
    PROP("max_record", P_MAX_RECORD, "Largest payload one record may carry."),
    PROP("used_bytes", P_USED, "Bytes published and not yet consumed (incl. headers)."),
    PROP("free_bytes", P_FREE, "capacity - used_bytes."),
    PROP("pushed", P_PUSHED, "Records published since init/reset."),
    PROP("popped", P_POPPED, "Records consumed since init/reset."),
    PROP("head", P_HEAD, "Byte position the consumer has released up to."),
    PROP("tail", P_TAIL, "Byte position the producer has published up to."),
    {"spin", (getter)Ring_get, (setter)Ring_set_spin,
     "Pause iterations a wait spends before sleeping on the futex.", (void *)P_SPIN},
    {"closed", (getter)Ring_get_closed, NULL, "True after close().", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Ring_methods[] = {
    {"init", (PyCFunction)(void (*)(void))Ring_init_cls, METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "init(buffer, capacity, *, spin=0) -> Ring\n\nFormat `buffer` as an empty ring and "
     "attach to it."},
    {"try_push", (PyCFunction)Ring_try_push, METH_O,
     "try_push(data) -> bool\n\nPublish one record; False if it does not fit now."},
    {"push", (PyCFunction)(void (*)(void))Ring_push, METH_VARARGS | METH_KEYWORDS,
     "push(data, timeout=None) -> bool\n\nPublish one record, waiting up to `timeout` "
     "seconds for space (None: no limit). False on timeout."},
    {"push_many", (PyCFunction)Ring_push_many, METH_O,
     "push_many(items) -> int\n\nPublish as many leading items as fit, with one wake-up; "
     "returns how many."},
    {"wait_writable", (PyCFunction)(void (*)(void))Ring_wait_writable,
     METH_VARARGS | METH_KEYWORDS,
     "wait_writable(size, timeout=None) -> bool\n\nWait until a record of `size` bytes fits."},
    {"try_pop", (PyCFunction)Ring_try_pop, METH_NOARGS,
     "try_pop() -> bytes | None\n\nTake the next record, or None if the ring is empty."},
    {"pop", (PyCFunction)(void (*)(void))Ring_pop, METH_VARARGS | METH_KEYWORDS,
     "pop(timeout=None) -> bytes | None\n\nTake the next record, waiting up to `timeout` "
     "seconds (None: no limit). None on timeout."},
    {"pop_many", (PyCFunction)(void (*)(void))Ring_pop_many, METH_VARARGS | METH_KEYWORDS,
     "pop_many(max_items, timeout=None) -> list[bytes]\n\nWait once for data, then take up "
     "to `max_items` records; empty list on timeout."},
    {"wait_readable", (PyCFunction)(void (*)(void))Ring_wait_readable,
     METH_VARARGS | METH_KEYWORDS,
     "wait_readable(timeout=None) -> bool\n\nWait until a record is available."},
    {"stats", (PyCFunction)Ring_stats, METH_NOARGS,
     "stats() -> dict\n\nPositions, counters and waiter flags, read without locking."},
    {"reset", (PyCFunction)Ring_reset, METH_NOARGS,
     "reset() -> None\n\nEmpty the ring.  Only when no peer is attached (e.g. it died); "
     "other handles must attach again."},
    {"close", (PyCFunction)Ring_close, METH_NOARGS,
     "close() -> None\n\nRelease the buffer.  Idempotent."},
    {"__enter__", (PyCFunction)Ring_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Ring_exit, METH_VARARGS, NULL},
    {"__reduce__", (PyCFunction)Ring_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Ring_slots[] = {
    {Py_tp_doc, "Ring(buffer, *, spin=0)\n--\n\n"
                "Attach to a single-producer/single-consumer record ring formatted in a "
                "writable buffer (see Ring.init)."},
    {Py_tp_new, Ring_new},
    {Py_tp_dealloc, Ring_dealloc},
    {Py_tp_methods, Ring_methods},
    {Py_tp_getset, Ring_getset},
    {0, NULL},
};

/* Not a base type: methods find the module state through Py_TYPE(self). */
static PyType_Spec Ring_spec = {
    .name = "fastext.ring.Ring",
    .basicsize = sizeof(RingObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Ring_slots,
};

/* ---- module ---------------------------------------------------------------- */

static PyObject *mod_required_size(PyObject *module, PyObject *arg)
{
    (void)module;
    long long capacity = PyLong_AsLongLong(arg);
    if (capacity == -1 && PyErr_Occurred())
        return NULL;
    size_t size = (capacity < 0 || capacity > UINT32_MAX)
                      ? 0
                      : fx_ring_required_size((uint32_t)capacity);
    if (size == 0)
        return PyErr_Format(PyExc_ValueError,
                            "capacity must be a power of two in [%u, %u], not %lld",
                            FX_RING_MIN_CAPACITY, FX_RING_MAX_CAPACITY, capacity);
    return PyLong_FromSize_t(size);
}

static PyMethodDef module_methods[] = {
    {"required_size", mod_required_size, METH_O,
     "required_size(capacity) -> int\n\nBytes a buffer needs to hold a ring of `capacity`."},
    {NULL, NULL, 0, NULL},
};

static int add_exception(PyObject *m, PyObject **slot, const char *name, const char *doc,
                         PyObject *base)
{
    *slot = PyErr_NewExceptionWithDoc(name, doc, base, NULL);
    if (*slot == NULL)
        return -1;
    return PyModule_AddObjectRef(m, strrchr(name, '.') + 1, *slot);
}

static int module_exec(PyObject *m)
{
    module_state *st = PyModule_GetState(m);
    /* Ring errors belong to the package's one error tree. */
    PyObject *errors = PyImport_ImportModule("fastext.errors");
    if (errors == NULL)
        return -1;
    PyObject *base = PyObject_GetAttrString(errors, "FastextError");
    Py_DECREF(errors);
    if (base == NULL)
        return -1;
    int rc = add_exception(m, &st->ring_error, "fastext.ring.RingError",
                           "A ring operation failed.", base);
    Py_DECREF(base);
    if (rc < 0)
        return -1;
    if (add_exception(m, &st->ring_corrupt, "fastext.ring.RingCorrupt",
                      "Shared ring state failed validation: the ring must be reset or "
                      "rebuilt.",
                      st->ring_error) < 0)
        return -1;
    PyObject *too_large_bases = PyTuple_Pack(2, st->ring_error, PyExc_ValueError);
    if (too_large_bases == NULL)
        return -1;
    rc = add_exception(m, &st->record_too_large, "fastext.ring.RecordTooLarge",
                       "A record is larger than the ring's max_record.", too_large_bases);
    Py_DECREF(too_large_bases);
    if (rc < 0)
        return -1;
    st->ring_type = PyType_FromModuleAndSpec(m, &Ring_spec, NULL);
    if (st->ring_type == NULL || PyModule_AddObjectRef(m, "Ring", st->ring_type) < 0)
        return -1;
    if (PyModule_AddIntConstant(m, "MIN_CAPACITY", FX_RING_MIN_CAPACITY) < 0 ||
        PyModule_AddIntConstant(m, "MAX_CAPACITY", FX_RING_MAX_CAPACITY) < 0 ||
        PyModule_AddIntConstant(m, "HEADER_SIZE", FX_RING_HEADER_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "MAX_SPIN", FX_RING_MAX_SPIN) < 0)
        return -1;
    return 0;
}

static int module_traverse(PyObject *m, visitproc visit, void *arg)
{
    module_state *st = PyModule_GetState(m);
    Py_VISIT(st->ring_type);
    Py_VISIT(st->ring_error);
    Py_VISIT(st->ring_corrupt);
    Py_VISIT(st->record_too_large);
    return 0;
}

static int module_clear(PyObject *m)
{
    module_state *st = PyModule_GetState(m);
    Py_CLEAR(st->ring_type);
    Py_CLEAR(st->ring_error);
    Py_CLEAR(st->ring_corrupt);
    Py_CLEAR(st->record_too_large);
    return 0;
}

static void module_free(void *m)
{
    module_clear((PyObject *)m);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef ring_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fastext._native._ring",
    .m_doc = "Shared-memory SPSC record ring (private: use fastext.ring).",
    .m_size = sizeof(module_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__ring(void)
{
    return PyModuleDef_Init(&ring_module);
}
