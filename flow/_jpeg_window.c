/* flow._jpeg_window: a window of a JPEG, decoded by libjpeg-turbo without the rest of the image.
 *
 * A RandomResizedCrop window keeps on average half of a photo; simplejpeg (the TurboJPEG API) can
 * only decode all of it. libjpeg-turbo's libjpeg API can do less: jpeg_crop_scanline limits the
 * inverse DCT, upsampling and colour conversion to the window's columns, jpeg_skip_scanlines skips
 * them for the rows above it, and the rows below it are never decoded at all.
 *
 * The library is the libjpeg-turbo that Pillow's wheels bundle (or the system's), opened with
 * dlopen at `load(path)`: nothing to build or install beyond flow's own pip install. Its headers
 * (flow/libjpeg/, jpeg62 ABI) lay out the structures; jpeg_CreateDecompress refuses a library whose
 * structure sizes differ, so a mismatched one is an error at load, never a wrong decode.
 *
 * decode(data, shrink, top, left, out) writes the (top, left) window of `out`'s size of the image as
 * decoded at 1/shrink (libjpeg's DCT scaling, as simplejpeg's min_factor) into `out`, RGB uint8,
 * with the very pixels a full decode has there: the window is widened by a pixel on each side
 * before libjpeg aligns it to its blocks, so that the fancy upsampler's edge columns (which lack
 * their neighbour) fall outside it. Warnings (corrupt data libjpeg would paper over) are errors, as
 * simplejpeg makes them. The GIL is released while it decodes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include "jpeglib.h"

static struct {
    struct jpeg_error_mgr *(*std_error)(struct jpeg_error_mgr *);
    void (*create_decompress)(j_decompress_ptr, int, size_t);
    void (*destroy_decompress)(j_decompress_ptr);
    void (*mem_src)(j_decompress_ptr, const unsigned char *, unsigned long);
    int (*read_header)(j_decompress_ptr, boolean);
    boolean (*start_decompress)(j_decompress_ptr);
    void (*crop_scanline)(j_decompress_ptr, JDIMENSION *, JDIMENSION *);
    JDIMENSION (*skip_scanlines)(j_decompress_ptr, JDIMENSION);
    JDIMENSION (*read_scanlines)(j_decompress_ptr, JSAMPARRAY, JDIMENSION);
    void (*abort_decompress)(j_decompress_ptr);
} lib;
static void *library;  /* the dlopen handle, kept for the process's life */

typedef struct {
    struct jpeg_error_mgr manager;
    jmp_buf escape;
    char message[JMSG_LENGTH_MAX];
} error_handler;

static void fail(j_common_ptr cinfo) {
    error_handler *handler = (error_handler *)cinfo->err;
    handler->manager.format_message(cinfo, handler->message);
    longjmp(handler->escape, 1);
}

static void warn(j_common_ptr cinfo, int level) {
    if (level < 0)  /* a warning (corrupt data); higher levels are trace messages */
        fail(cinfo);
}

static PyObject *load(PyObject *module, PyObject *args) {
    const char *path;
    if (!PyArg_ParseTuple(args, "s:load", &path))
        return NULL;
    if (library != NULL)
        Py_RETURN_NONE;
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL)
        return PyErr_Format(PyExc_OSError, "cannot open libjpeg %s: %s", path, dlerror());
    struct {
        void **slot;
        const char *name;
    } symbols[] = {
        {(void **)&lib.std_error, "jpeg_std_error"},
        {(void **)&lib.create_decompress, "jpeg_CreateDecompress"},
        {(void **)&lib.destroy_decompress, "jpeg_destroy_decompress"},
        {(void **)&lib.mem_src, "jpeg_mem_src"},
        {(void **)&lib.read_header, "jpeg_read_header"},
        {(void **)&lib.start_decompress, "jpeg_start_decompress"},
        {(void **)&lib.crop_scanline, "jpeg_crop_scanline"},
        {(void **)&lib.skip_scanlines, "jpeg_skip_scanlines"},
        {(void **)&lib.read_scanlines, "jpeg_read_scanlines"},
        {(void **)&lib.abort_decompress, "jpeg_abort_decompress"},
    };
    for (size_t i = 0; i < sizeof symbols / sizeof symbols[0]; i++) {
        *symbols[i].slot = dlsym(handle, symbols[i].name);
        if (*symbols[i].slot == NULL) {
            dlclose(handle);
            return PyErr_Format(PyExc_OSError, "libjpeg %s lacks %s (libjpeg-turbo 1.5 or later has it)", path,
                                symbols[i].name);
        }
    }
    /* The structure sizes checked once here, not at every decode's first error. */
    struct jpeg_decompress_struct cinfo;
    error_handler handler;
    cinfo.err = lib.std_error(&handler.manager);
    handler.manager.error_exit = fail;
    if (setjmp(handler.escape)) {
        dlclose(handle);
        return PyErr_Format(PyExc_OSError, "libjpeg %s does not fit flow's jpeg62 headers: %s", path,
                            handler.message);
    }
    lib.create_decompress(&cinfo, JPEG_LIB_VERSION, sizeof cinfo);
    lib.destroy_decompress(&cinfo);
    library = handle;
    Py_RETURN_NONE;
}

typedef struct {
    const unsigned char *data;
    unsigned long size;
    int shrink, top, left, height, width;
    unsigned char *out;
    char message[JMSG_LENGTH_MAX];
} job;

static int run(job *j) {
    struct jpeg_decompress_struct cinfo;
    error_handler handler;
    JSAMPROW *volatile rows = NULL;  /* volatile: freed after a longjmp */
    cinfo.err = lib.std_error(&handler.manager);
    handler.manager.error_exit = fail;
    handler.manager.emit_message = warn;
    if (setjmp(handler.escape)) {
        memcpy(j->message, handler.message, sizeof j->message);
        free(rows);
        lib.destroy_decompress(&cinfo);
        return -1;
    }
    lib.create_decompress(&cinfo, JPEG_LIB_VERSION, sizeof cinfo);
    lib.mem_src(&cinfo, j->data, j->size);
    lib.read_header(&cinfo, TRUE);
    cinfo.out_color_space = JCS_RGB;
    cinfo.scale_num = 1;
    cinfo.scale_denom = j->shrink;
    lib.start_decompress(&cinfo);
    const JDIMENSION bottom = j->top + j->height, right = j->left + j->width;
    if (bottom > cinfo.output_height || right > cinfo.output_width) {
        snprintf(j->message, sizeof j->message, "window %dx%d at (%d, %d) is outside the %ux%u image", j->height,
                 j->width, j->top, j->left, cinfo.output_height, cinfo.output_width);
        lib.destroy_decompress(&cinfo);
        return -1;
    }
    JDIMENSION first_column = j->left > 0 ? j->left - 1 : 0;
    JDIMENSION columns = (right < cinfo.output_width ? right + 1 : right) - first_column;
    if (columns < cinfo.output_width)
        lib.crop_scanline(&cinfo, &first_column, &columns);  /* widens it to whole blocks */
    /* All the window's rows in one buffer, read a row group per call (a row at a time cost ~40%). */
    const size_t row_bytes = (size_t)columns * 3;
    rows = malloc(j->height * (row_bytes + sizeof(JSAMPROW)));
    if (rows == NULL) {
        snprintf(j->message, sizeof j->message, "out of memory");
        lib.destroy_decompress(&cinfo);
        return -1;
    }
    unsigned char *pixels = (unsigned char *)(rows + j->height);
    for (int y = 0; y < j->height; y++)
        rows[y] = pixels + y * row_bytes;
    if (j->top > 0)
        lib.skip_scanlines(&cinfo, j->top);
    for (int y = 0; y < j->height;)
        y += lib.read_scanlines(&cinfo, rows + y, j->height - y);
    const size_t out_stride = (size_t)j->width * 3, offset = (size_t)(j->left - first_column) * 3;
    for (int y = 0; y < j->height; y++)
        memcpy(j->out + y * out_stride, rows[y] + offset, out_stride);
    free(rows);
    lib.abort_decompress(&cinfo);  /* the rows below the window are never decoded */
    lib.destroy_decompress(&cinfo);
    return 0;
}

static PyObject *decode(PyObject *module, PyObject *args) {
    Py_buffer data, out;
    PyObject *out_object;
    job j;
    if (library == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "flow._jpeg_window.load(path) first");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*iiiO:decode", &data, &j.shrink, &j.top, &j.left, &out_object))
        return NULL;
    if (PyObject_GetBuffer(out_object, &out, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    PyObject *result = NULL;
    if (j.shrink != 1 && j.shrink != 2 && j.shrink != 4 && j.shrink != 8) {
        PyErr_Format(PyExc_ValueError, "shrink: expected 1, 2, 4 or 8, got %d", j.shrink);
    } else if (out.ndim != 3 || out.shape[2] != 3 || strcmp(out.format, "B") != 0) {
        PyErr_SetString(PyExc_ValueError, "out: expected a C-contiguous uint8 array of shape (height, width, 3)");
    } else if (j.top < 0 || j.left < 0 || out.shape[0] < 1 || out.shape[1] < 1) {
        PyErr_Format(PyExc_ValueError, "window %zdx%zd at (%d, %d): expected a non-empty window at a place >= 0",
                     out.shape[0], out.shape[1], j.top, j.left);
    } else {
        j.data = data.buf;
        j.size = (unsigned long)data.len;
        j.height = (int)out.shape[0];
        j.width = (int)out.shape[1];
        j.out = out.buf;
        int status;
        Py_BEGIN_ALLOW_THREADS
        status = run(&j);
        Py_END_ALLOW_THREADS
        if (status < 0)
            PyErr_SetString(PyExc_ValueError, j.message);
        else
            result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"load", load, METH_VARARGS, "load(path): opens the libjpeg(-turbo) shared library at `path` (once a process)."},
    {"decode", decode, METH_VARARGS,
     "decode(data, shrink, top, left, out): the (top, left) window of out's size of the JPEG `data` decoded at\n"
     "1/shrink (1, 2, 4 or 8), RGB, into the uint8 (height, width, 3) `out`, decoding only what the window\n"
     "needs. ValueError with libjpeg's message for corrupt data. GIL released."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "flow._jpeg_window", NULL, 0, methods};

PyMODINIT_FUNC PyInit__jpeg_window(void) { return PyModule_Create(&module); }
