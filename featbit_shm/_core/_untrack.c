/*
 * Take compiled flags and segments out of the garbage collector's view
 * (optional accelerator; see featbit_shm._core.model.settle).
 *
 * A worker that evaluates 100k flags holds over a million small objects for
 * them, and every full collection of the cycle collector walks each one: a
 * pause of about half a second, at any moment of the process's life. None of
 * them can be part of a reference cycle: a compiled flag is a tree of
 * values built once and never changed (tuples, frozensets, dicts of prebuilt
 * results, the lists of a segment's stored form, instances of the model's own
 * classes) that only its view refers to, and reference counting frees it. So the collector has nothing to find there.
 *
 * untrack(obj, types) untracks obj and, depth first, everything it holds
 * whose type is exactly tuple, frozenset, dict or list, or one of ``types`` (the
 * model's classes, which are plain heap types whose deallocation untracks
 * with the checked PyObject_GC_UnTrack). It stops at anything else --
 * functions, bound methods, types, modules, enum members -- which stay
 * tracked, and at MAX_DEPTH. It returns how many objects it untracked.
 *
 * Safety: an untracked object is never collected as garbage and never
 * considered by the collector; objects it refers to count as referenced from
 * outside, so they are never freed early. The one cost of a mistake would be
 * a leaked cycle, which the tree shape rules out. CPython untracks tuples and
 * dicts of atoms itself the same way; a dict that gains a tracked value is
 * tracked again by CPython. Every type allowed here deallocates through the
 * checked PyObject_GC_UnTrack (CPython 3.9 to 3.13); bound methods and
 * functions do not, which is why a flag keeps its rule walk as a function
 * and a tuple of operands, never as a bound method. Runs with the GIL held and calls no Python code.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define MAX_DEPTH 32

typedef struct {
    PyObject *types; /* a tuple of types */
    int depth;
    Py_ssize_t count;
} walk_state;

static int
allowed(PyObject *obj, PyObject *types)
{
    PyTypeObject *t = Py_TYPE(obj);
    if (t == &PyTuple_Type || t == &PyFrozenSet_Type || t == &PyDict_Type || t == &PyList_Type)
        return 1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(types); i++) {
        if ((PyObject *)t == PyTuple_GET_ITEM(types, i))
            return 1;
    }
    return 0;
}

static int visit(PyObject *obj, void *arg);

static void
settle(PyObject *obj, walk_state *st)
{
    if (!PyObject_IS_GC(obj) || !PyObject_GC_IsTracked(obj) || !allowed(obj, st->types))
        return;
    PyObject_GC_UnTrack(obj);
    st->count++;
    if (st->depth >= MAX_DEPTH)
        return; /* what lies deeper stays tracked: a cost, never a risk */
    traverseproc traverse = Py_TYPE(obj)->tp_traverse;
    if (traverse != NULL) {
        st->depth++;
        traverse(obj, visit, st);
        st->depth--;
    }
}

static int
visit(PyObject *obj, void *arg)
{
    if (obj != NULL)
        settle(obj, (walk_state *)arg);
    return 0;
}

static PyObject *
untrack(PyObject *self, PyObject *args)
{
    PyObject *obj, *types;
    if (!PyArg_ParseTuple(args, "OO!:untrack", &obj, &PyTuple_Type, &types))
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(types); i++) {
        PyObject *t = PyTuple_GET_ITEM(types, i);
        if (!PyType_Check(t) || !(((PyTypeObject *)t)->tp_flags & Py_TPFLAGS_HEAPTYPE)) {
            PyErr_SetString(PyExc_TypeError, "untrack: types must be classes defined in Python");
            return NULL;
        }
    }
    walk_state st = {types, 0, 0};
    settle(obj, &st);
    return PyLong_FromSsize_t(st.count);
}

static PyMethodDef methods[] = {
    {"untrack", untrack, METH_VARARGS,
     "untrack(obj, types) -> int: untrack obj and the tuples, frozensets, dicts, lists and instances of types it holds."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_untrack", "Compiled flags out of the cycle collector's view (see model.settle).", -1, methods,
};

PyMODINIT_FUNC
PyInit__untrack(void)
{
    return PyModule_Create(&module);
}
