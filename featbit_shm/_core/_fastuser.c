/*
 * The user check of every evaluation, for the common case (optional accelerator).
 *
 * featbit_shm._core.user.make_user is the reference. user_key(obj) returns
 * the user's key when obj is *plainly* valid by make_user's rules: an exact
 * dict whose key ("key", else "keyId", else "keyid"; None counts as absent)
 * is an exact str that is not blank, whose "name" is absent, None or an
 * exact str, and whose every value is an exact str, int, float, bool or None.
 * In every other case it returns None and the caller asks make_user, which
 * either accepts the user (a Mapping that is not a dict, values of subclasses
 * of str/int/float) or says why it is invalid. So None never means "invalid",
 * only "not decided here"; a key always means make_user accepts obj with that
 * key (tests/test_user.py checks both against make_user on generated users).
 *
 * Runs with the GIL held and calls no Python code but dict lookups of the
 * three key names (which may run a key's __eq__; any error is cleared and
 * the answer is None, so make_user meets the same error).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *s_key, *s_keyId, *s_keyid, *s_name;

/* The value under name, borrowed; NULL when absent or None. -1 on error. */
static int
lookup(PyObject *dict, PyObject *name, PyObject **out)
{
    PyObject *v = PyDict_GetItemWithError(dict, name);
    if (v == NULL && PyErr_Occurred())
        return -1;
    *out = (v == Py_None) ? NULL : v;
    return 0;
}

static int
blank(PyObject *s)
{
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(s) < 0) {
        PyErr_Clear();
        return 1; /* not decided here: make_user reads it */
    }
#endif
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, i)))
            return 0;
    }
    return 1; /* empty or only whitespace, as `not s or s.isspace()` */
}

static PyObject *
user_key(PyObject *module, PyObject *obj)
{
    PyObject *key = NULL, *name = NULL, *k, *v;
    Py_ssize_t pos = 0;

    if (!PyDict_CheckExact(obj))
        Py_RETURN_NONE;
    if (lookup(obj, s_key, &key) < 0)
        goto error;
    if (key == NULL && lookup(obj, s_keyId, &key) < 0)
        goto error;
    if (key == NULL && lookup(obj, s_keyid, &key) < 0)
        goto error;
    if (key == NULL || !PyUnicode_CheckExact(key) || blank(key))
        Py_RETURN_NONE;
    if (lookup(obj, s_name, &name) < 0)
        goto error;
    if (name != NULL && !PyUnicode_CheckExact(name))
        Py_RETURN_NONE;
    while (PyDict_Next(obj, &pos, &k, &v)) {
        if (!(PyUnicode_CheckExact(v) || PyLong_CheckExact(v) || PyBool_Check(v) || v == Py_None ||
              PyFloat_CheckExact(v)))
            Py_RETURN_NONE;
    }
    Py_INCREF(key);
    return key;

error:
    PyErr_Clear();
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"user_key", user_key, METH_O,
     "user_key(obj) -> str | None: the key of a plainly valid user dict; None: ask make_user."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastuser", "Fast path of the evaluation user check (see user.make_user).", -1, methods,
};

PyMODINIT_FUNC
PyInit__fastuser(void)
{
    s_key = PyUnicode_InternFromString("key");
    s_keyId = PyUnicode_InternFromString("keyId");
    s_keyid = PyUnicode_InternFromString("keyid");
    s_name = PyUnicode_InternFromString("name");
    if (s_key == NULL || s_keyId == NULL || s_keyid == NULL || s_name == NULL)
        return NULL;
    return PyModule_Create(&module);
}
