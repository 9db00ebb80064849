/*
 * The producer's fast path for evaluation events (optional accelerator).
 *
 * featbit_shm.shm.ring.Ring.append is the reference: this writes the same
 * bytes into the same ring, for the common case only -- the record fits
 * before the end of the ring, in reserved pages, with room to spare. In any
 * other case it writes nothing and returns False, and the caller takes the
 * Python path (which wraps, reserves pages, or drops and counts, R-67).
 *
 * Called with the recorder's lock held and the GIL held throughout, so it
 * never races another producer thread of this process. The consumer (the
 * sync process) reads head with acquire semantics after this release store.
 *
 * Record, after the ring's u32 length prefix (featbit_shm._core.records):
 *     u16 0xFFFF | u64 ts_ns | u16 tail length | tail | user
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Header words (u64, little-endian), as featbit_shm.shm.ring defines them. */
enum { W_CAP = 2, W_HEAD = 3, W_TAIL = 4, W_RESERVED = 12, W_WRITTEN = 15 };
#define HEADER_BYTES 4096
#define EVAL_MARK 0xFFFF

typedef struct {
    PyObject_HEAD
    Py_buffer view; /* the whole ring mapping, held while the writer lives */
    int held;
} Writer;

static int
Writer_init(Writer *self, PyObject *args, PyObject *kwds)
{
    PyObject *mapping;
    if (!PyArg_ParseTuple(args, "O:Writer", &mapping))
        return -1;
    if (self->held) {
        PyBuffer_Release(&self->view);
        self->held = 0;
    }
    if (PyObject_GetBuffer(mapping, &self->view, PyBUF_WRITABLE | PyBUF_SIMPLE) < 0)
        return -1;
    self->held = 1;
    uint64_t *words = (uint64_t *)self->view.buf;
    if (self->view.len < HEADER_BYTES || words[W_CAP] == 0 || words[W_CAP] % 8 ||
        (uint64_t)(self->view.len - HEADER_BYTES) < words[W_CAP]) {
        PyBuffer_Release(&self->view);
        self->held = 0;
        PyErr_SetString(PyExc_ValueError, "not an event ring mapping");
        return -1;
    }
    return 0;
}

static void
Writer_dealloc(Writer *self)
{
    if (self->held)
        PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Writer_release(Writer *self, PyObject *Py_UNUSED(ignored))
{
    if (self->held) {
        PyBuffer_Release(&self->view);
        self->held = 0;
    }
    Py_RETURN_NONE;
}

/* append_eval(ts_ns, tail, user) -> bool */
static PyObject *
Writer_append_eval(Writer *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_CheckExact(args[1]) || !PyBytes_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "append_eval(ts_ns: int, tail: bytes, user: bytes)");
        return NULL;
    }
    if (!self->held)
        Py_RETURN_FALSE;
    unsigned long long ts = PyLong_AsUnsignedLongLong(args[0]);
    if (ts == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t tlen = PyBytes_GET_SIZE(args[1]);
    Py_ssize_t ulen = PyBytes_GET_SIZE(args[2]);
    if (tlen > 0xFFFF || ulen > 0x7FFFFFFF - 0x10000)
        Py_RETURN_FALSE;

    uint64_t *words = (uint64_t *)self->view.buf;
    unsigned char *data = (unsigned char *)self->view.buf + HEADER_BYTES;
    uint64_t cap = words[W_CAP];
    uint64_t head = words[W_HEAD]; /* ours alone: written only by this producer */
    uint64_t size = 4 + 2 + 8 + 2 + (uint64_t)tlen + (uint64_t)ulen;
    uint64_t total = (size + 7) & ~(uint64_t)7;
    uint64_t pos = head % cap;
    uint64_t end = head + total;
    uint64_t tail = __atomic_load_n(&words[W_TAIL], __ATOMIC_ACQUIRE);
    if (pos + total > cap || end - tail > cap || end > words[W_RESERVED])
        Py_RETURN_FALSE; /* wrap, full or unreserved pages: the Python path */

    unsigned char *p = data + pos;
    uint32_t frame = (uint32_t)(size - 4);
    uint16_t mark = EVAL_MARK, tl = (uint16_t)tlen;
    uint64_t ts64 = (uint64_t)ts;
    memcpy(p, &frame, 4); /* little-endian: x86-64 and aarch64 Linux */
    memcpy(p + 4, &mark, 2);
    memcpy(p + 6, &ts64, 8);
    memcpy(p + 14, &tl, 2);
    memcpy(p + 16, PyBytes_AS_STRING(args[1]), (size_t)tlen);
    memcpy(p + 16 + tlen, PyBytes_AS_STRING(args[2]), (size_t)ulen);
    /* The record is complete; only now may the consumer see it. */
    __atomic_store_n(&words[W_HEAD], end, __ATOMIC_RELEASE);
    words[W_WRITTEN] += 1; /* ours alone too; a statistic the consumer reads as it is */
    Py_RETURN_TRUE;
}

static PyMethodDef Writer_methods[] = {
    {"append_eval", (PyCFunction)(void (*)(void))Writer_append_eval, METH_FASTCALL,
     "Write one evaluation record if it fits the fast path; False: use Ring.append."},
    {"release", (PyCFunction)Writer_release, METH_NOARGS, "Let go of the ring mapping."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "featbit_shm.shm._fastring.Writer",
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The event ring producer's fast path (see ring.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Writer_init,
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_methods = Writer_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastring", "Optional C fast path of featbit_shm's event rings.", -1, NULL,
};

PyMODINIT_FUNC
PyInit__fastring(void)
{
#if PY_BIG_ENDIAN
    PyErr_SetString(PyExc_ImportError, "the ring layout is little-endian");
    return NULL;
#endif
    if (PyType_Ready(&WriterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&WriterType);
    if (PyModule_AddObject(m, "Writer", (PyObject *)&WriterType) < 0) {
        Py_DECREF(&WriterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
