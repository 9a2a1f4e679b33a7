/*
 * fastext._native._wire: thin CPython binding over wire.c.
 *
 * parse_sample allocates nothing but its result tuple (the frame stays in the
 * caller's bytes; the tuple says where).  encode_ack(s) size each ack exactly
 * and write it straight into a new bytes object: one allocation per ack.
 *
 * Import only through fastext.wire.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "wire.h"

/* Borrow a contiguous byte view: bytes directly (the hot path), anything else
 * through the buffer protocol. */
typedef struct {
    const uint8_t *ptr;
    Py_ssize_t len;
    Py_buffer view;
    int has_view;
} bytes_arg;

static int bytes_arg_get(PyObject *obj, bytes_arg *a)
{
    a->has_view = 0;
    if (PyBytes_Check(obj)) {
        a->ptr = (const uint8_t *)PyBytes_AS_STRING(obj);
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

/* A Python int in 0 .. 2**64-1 (anything with __index__ is accepted). */
static int as_u64(PyObject *obj, const char *name, uint64_t *out)
{
    unsigned long long v;
    if (PyLong_CheckExact(obj)) {
        v = PyLong_AsUnsignedLongLong(obj);
    } else {
        PyObject *num = PyNumber_Index(obj);
        if (num == NULL)
            return -1;
        v = PyLong_AsUnsignedLongLong(num);
        Py_DECREF(num);
    }
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_OverflowError, "%s must be in 0 .. 2**64-1, not %R", name, obj);
        }
        return -1;
    }
    *out = v;
    return 0;
}

static int check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t expected)
{
    if (nargs == expected)
        return 0;
    PyErr_Format(PyExc_TypeError, "%s() takes exactly %zd positional arguments (%zd given)",
                 name, expected, nargs);
    return -1;
}

/* ---- parse ------------------------------------------------------------------ */

static PyObject *u64(uint64_t v)
{
    return PyLong_FromUnsignedLongLong((unsigned long long)v);
}

static PyObject *mod_parse_sample(PyObject *module, PyObject *data)
{
    (void)module;
    bytes_arg in;
    if (bytes_arg_get(data, &in) < 0)
        return NULL;
    fx_sample s;
    fx_wire_status st = fx_parse_sample(in.ptr, (size_t)in.len, &s);
    bytes_arg_release(&in);
    if (st != FX_WIRE_OK)
        Py_RETURN_NONE; /* not the canonical sample: the caller asks protobuf */
    PyObject *t = PyTuple_New(5);
    if (t == NULL)
        return NULL;
    uint64_t values[5] = {s.seq, s.timestamp, (uint64_t)s.kind, s.a, s.b};
    for (Py_ssize_t i = 0; i < 5; i++) {
        PyObject *v = u64(values[i]);
        if (v == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, v);
    }
    return t;
}

/* ---- encode ----------------------------------------------------------------- */

static PyObject *build_ack(uint64_t seq, uint64_t ack, uint64_t timestamp, PyObject *inferences)
{
    bytes_arg inf;
    if (bytes_arg_get(inferences, &inf) < 0)
        return NULL;
    size_t size = 0, written = 0;
    PyObject *out = NULL;
    fx_wire_status st = fx_ack_size(seq, ack, timestamp, (size_t)inf.len, &size);
    if (st == FX_WIRE_OK) {
        out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
        if (out != NULL)
            st = fx_encode_ack(seq, ack, timestamp, inf.ptr, (size_t)inf.len,
                               (uint8_t *)PyBytes_AS_STRING(out), size, &written);
    }
    bytes_arg_release(&inf);
    if (out == NULL && st == FX_WIRE_OK)
        return NULL; /* MemoryError */
    if (st != FX_WIRE_OK || written != size) {
        Py_XDECREF(out);
        if (st == FX_WIRE_TOO_BIG)
            return PyErr_Format(PyExc_ValueError,
                                "an ack with %zd bytes of inferences exceeds protobuf's 2 GiB "
                                "message limit", inf.len);
        return PyErr_Format(PyExc_SystemError, "fx_encode_ack: %s", fx_wire_status_name(st));
    }
    return out;
}

static PyObject *mod_encode_ack(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    uint64_t seq, ack, timestamp;
    if (check_nargs("encode_ack", nargs, 4) < 0)
        return NULL;
    if (as_u64(args[0], "sequence_number", &seq) < 0 ||
        as_u64(args[1], "ack_sequence_number", &ack) < 0 ||
        as_u64(args[2], "timestamp", &timestamp) < 0)
        return NULL;
    return build_ack(seq, ack, timestamp, args[3]);
}

static PyObject *mod_encode_acks(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    uint64_t first;
    if (check_nargs("encode_acks", nargs, 2) < 0 ||
        as_u64(args[0], "first_seq", &first) < 0)
        return NULL;
    PyObject *acks = PySequence_Fast(args[1], "acks must be a sequence of "
                                              "(ack_sequence_number, timestamp, inferences)");
    if (acks == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(acks);
    if (n > 0 && (uint64_t)(n - 1) > UINT64_MAX - first) {
        Py_DECREF(acks);
        return PyErr_Format(PyExc_OverflowError,
                            "sequence numbers %R + %zd run past 2**64-1", args[0], n - 1);
    }
    PyObject *out = PyList_New(n);
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        /* An item's __index__ may run Python code that changes a list: hold the
         * item and look at the current size each time. */
        if (i >= PySequence_Fast_GET_SIZE(acks)) {
            PyErr_SetString(PyExc_RuntimeError, "acks changed size during encode_acks");
            Py_CLEAR(out);
            break;
        }
        PyObject *item = PySequence_Fast_GET_ITEM(acks, i);
        Py_INCREF(item);
        uint64_t ack, timestamp;
        PyObject *msg = NULL;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3)
            PyErr_Format(PyExc_TypeError, "acks[%zd] must be a tuple (ack_sequence_number, "
                         "timestamp, inferences), not %.100s", i, Py_TYPE(item)->tp_name);
        else if (as_u64(PyTuple_GET_ITEM(item, 0), "ack_sequence_number", &ack) == 0 &&
                 as_u64(PyTuple_GET_ITEM(item, 1), "timestamp", &timestamp) == 0)
            msg = build_ack(first + (uint64_t)i, ack, timestamp, PyTuple_GET_ITEM(item, 2));
        Py_DECREF(item);
        if (msg == NULL)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, i, msg);
    }
    Py_DECREF(acks);
    return out;
}

/* ---- module ----------------------------------------------------------------- */

static PyMethodDef module_methods[] = {
    {"parse_sample", mod_parse_sample, METH_O,
     "parse_sample($module, data, /)\n--\n\n"
     "(seq, timestamp, kind, a, b) of the canonical sample message, or None.\n\n"
     "kind 0: no content; 1: content_bytes, the frame is data[a:a + b]; 2: "
     "content_reference, a = address_offset, b = length_bytes.  None for anything "
     "else (parse it with protobuf)."},
    {"encode_ack", (PyCFunction)(void (*)(void))mod_encode_ack, METH_FASTCALL,
     "encode_ack($module, sequence_number, ack_sequence_number, timestamp, inferences, /)\n"
     "--\n\n"
     "The serialized ack: media_sample { timestamp, inferences } with the two sequence "
     "numbers; `inferences` is a serialized MediaSample of field 10 entries (or b'')."},
    {"encode_acks", (PyCFunction)(void (*)(void))mod_encode_acks, METH_FASTCALL,
     "encode_acks($module, first_seq, acks, /)\n--\n\n"
     "encode_ack(first_seq + i, *acks[i]) for every i, as a list."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot module_slots[] = {
    {0, NULL},
};

static struct PyModuleDef wire_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fastext._native._wire",
    .m_doc = "The per-frame sample parser and ack encoder (private: use fastext.wire).",
    .m_size = 0,
    .m_methods = module_methods,
    .m_slots = module_slots,
};

PyMODINIT_FUNC PyInit__wire(void)
{
    return PyModuleDef_Init(&wire_module);
}
