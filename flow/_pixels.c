/* flow._pixels: the per-pixel loops that numpy cannot do at memory speed.
 *
 * normalize(images, out, mean, inv_std, mirror=None): uint8 NHWC images -> float32 NCHW,
 * (x - mean) * inv_std per RGB channel, the flagged images flipped left to right on the way.
 * numpy needs a strided transposing cast plus six plane passes for this (about 9 us a 64x64
 * image here); this loop reads each pixel once and, compiled with AVX2 where the CPU has it,
 * takes about a third of that. mirror(images, flags) flips uint8 images in place (numpy's
 * reversed-stride copy of 3-byte pixels took ~10 us a 64x64 image), and jitter_hls(images,
 * deltas) is the colour augmentation (numpy's version took 1.6 ms a 64x64 image, this ~85 us).
 * The GIL is released while any of them runs.
 *
 * Every loop does numpy's float32 arithmetic in numpy's order, rounded the same way (no fused
 * multiply-add: built with -ffp-contract=off), so the batches equal numpy's to the bit
 * (tests/test_pixels.py holds the numpy versions).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(__clang__)
#define FLOW_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FLOW_CLONES
#endif

FLOW_CLONES
static void normalize_images(const uint8_t *restrict src, float *restrict dst, Py_ssize_t images,
                             Py_ssize_t height, Py_ssize_t width, const float mean[3], const float inv_std[3],
                             const uint8_t *mirror) {
    const float mean_r = mean[0], mean_g = mean[1], mean_b = mean[2];
    const float scale_r = inv_std[0], scale_g = inv_std[1], scale_b = inv_std[2];
    const Py_ssize_t pixels = height * width;
    for (Py_ssize_t image = 0; image < images; image++) {
        const uint8_t *restrict rgb = src + image * pixels * 3;
        float *restrict red = dst + image * pixels * 3;
        float *restrict green = red + pixels;
        float *restrict blue = green + pixels;
        if (mirror == NULL || !mirror[image]) {
            for (Py_ssize_t i = 0; i < pixels; i++) {
                red[i] = ((float)rgb[3 * i] - mean_r) * scale_r;
                green[i] = ((float)rgb[3 * i + 1] - mean_g) * scale_g;
                blue[i] = ((float)rgb[3 * i + 2] - mean_b) * scale_b;
            }
            continue;
        }
        for (Py_ssize_t row = 0; row < height; row++) {  /* left to right from right to left */
            const uint8_t *restrict last = rgb + (row * width + width - 1) * 3;
            Py_ssize_t at = row * width;
            for (Py_ssize_t x = 0; x < width; x++) {
                red[at + x] = ((float)last[-3 * x] - mean_r) * scale_r;
                green[at + x] = ((float)last[-3 * x + 1] - mean_g) * scale_g;
                blue[at + x] = ((float)last[-3 * x + 2] - mean_b) * scale_b;
            }
        }
    }
}

static void mirror_images(uint8_t *images, Py_ssize_t count, Py_ssize_t height, Py_ssize_t width,
                          const uint8_t *mirror) {
    for (Py_ssize_t image = 0; image < count; image++) {
        if (!mirror[image])
            continue;
        for (Py_ssize_t row = 0; row < height; row++) {
            uint8_t *left = images + ((image * height + row) * width) * 3;
            uint8_t *right = left + (width - 1) * 3;
            for (; left < right; left += 3, right -= 3) {
                uint8_t swap[3] = {left[0], left[1], left[2]};
                memcpy(left, right, 3);
                memcpy(right, swap, 3);
            }
        }
    }
}

/* Branch-free (selects, not jumps), so that the compiler vectorizes the pixel loop; each select
 * keeps exactly the value numpy's np.where keeps, so the result is the same to the bit. */

static inline float clampf(float value, float low, float high) {
    return value < low ? low : (value > high ? high : value);
}

/* OpenCV's HLS -> RGB for one channel, `angle` degrees round the hue circle from it. numpy's
 * float32 `angle % 360` for the angles met here (hue +- 120, hue in [0, 360]): above 360 the
 * subtraction is exact (Sterbenz), as fmod is; below 0 numpy adds 360. */
static inline float hls_channel(float angle, float high, float low) {
    angle = angle >= 360.0f ? angle - 360.0f : (angle < 0.0f ? angle + 360.0f : angle);
    const float rising = low + (high - low) * angle / 60.0f;
    const float falling = low + (high - low) * (240.0f - angle) / 60.0f;
    return angle < 60.0f ? rising : (angle < 180.0f ? high : (angle < 240.0f ? falling : low));
}

static inline uint8_t to_level(float value) { return (uint8_t)clampf(rintf(value * 255.0f), 0.0f, 255.0f); }

/* Per image (H, L, S) deltas in OpenCV's 8-bit HLS units, as flow/augment.py's jitter_hls
 * describes; every float32 operation in numpy's order, so the result is the same to the bit. */
FLOW_CLONES
static void jitter_images(uint8_t *images, Py_ssize_t count, Py_ssize_t pixels, const float *deltas) {
    for (Py_ssize_t image = 0; image < count; image++) {
        const float delta_h = deltas[3 * image], delta_l = deltas[3 * image + 1], delta_s = deltas[3 * image + 2];
        uint8_t *restrict rgb = images + image * pixels * 3;
        for (Py_ssize_t i = 0; i < pixels; i++) {
            const float red = (float)rgb[3 * i] / 255.0f, green = (float)rgb[3 * i + 1] / 255.0f,
                        blue = (float)rgb[3 * i + 2] / 255.0f;
            const float high_rg = red > green ? red : green, low_rg = red < green ? red : green;
            const float high = high_rg > blue ? high_rg : blue, low = low_rg < blue ? low_rg : blue;
            const float spread = high - low, total = high + low;
            const int grey = spread == 0.0f;
            const float safe_spread = grey ? 1.0f : spread;
            float lightness = total / 2.0f;
            float saturation = spread / (grey ? 1.0f : (lightness < 0.5f ? total : 2.0f - total));
            saturation = grey ? 0.0f : saturation;
            const float hue_red = 60.0f * (green - blue) / safe_spread;
            const float hue_green = 120.0f + 60.0f * (blue - red) / safe_spread;
            const float hue_blue = 240.0f + 60.0f * (red - green) / safe_spread;
            float hue = high == red ? hue_red : (high == green ? hue_green : hue_blue);
            hue = hue < 0.0f ? hue + 360.0f : hue;
            hue = grey ? 0.0f : hue;
            hue = clampf(hue / 2.0f + delta_h, 0.0f, 180.0f) * 2.0f;
            lightness = clampf(lightness * 255.0f + delta_l, 0.0f, 255.0f) / 255.0f;
            saturation = clampf(saturation * 255.0f + delta_s, 0.0f, 255.0f) / 255.0f;
            const float top = lightness < 0.5f ? lightness * (1.0f + saturation)
                                               : lightness + saturation - lightness * saturation;
            const float bottom = 2.0f * lightness - top;
            rgb[3 * i] = to_level(hls_channel(hue + 120.0f, top, bottom));
            rgb[3 * i + 1] = to_level(hls_channel(hue, top, bottom));
            rgb[3 * i + 2] = to_level(hls_channel(hue - 120.0f, top, bottom));
        }
    }
}

/* A C-contiguous 4-d buffer of `format` whose axis `channel_axis` has 3 entries, or an exception. */
static int get_image_buffer(PyObject *object, Py_buffer *view, int flags, const char *format,
                            int channel_axis, const char *name) {
    if (PyObject_GetBuffer(object, view, flags | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    if (view->ndim != 4 || view->shape[channel_axis] != 3 || strcmp(view->format, format) != 0) {
        PyErr_Format(PyExc_ValueError, "%s: expected a C-contiguous 4-d array of format '%s' with 3 channels",
                     name, format);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* `flags` (None, or one byte a image) as a buffer of `count` bytes; NULL with no exception for None. */
static int get_flags(PyObject *object, Py_buffer *view, Py_ssize_t count) {
    view->buf = NULL;
    if (object == Py_None)
        return 0;
    if (PyObject_GetBuffer(object, view, PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->itemsize != 1 || view->len != count) {
        PyErr_Format(PyExc_ValueError, "mirror: expected %zd one-byte flags (bool or uint8), got %zd bytes",
                     count, view->len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *normalize(PyObject *module, PyObject *args) {
    PyObject *images_object, *out_object, *mirror_object = Py_None;
    float mean[3], inv_std[3];
    if (!PyArg_ParseTuple(args, "OO(fff)(fff)|O:normalize", &images_object, &out_object, &mean[0], &mean[1],
                          &mean[2], &inv_std[0], &inv_std[1], &inv_std[2], &mirror_object))
        return NULL;
    Py_buffer images, out, mirror;
    if (get_image_buffer(images_object, &images, PyBUF_SIMPLE, "B", 3, "images") < 0)
        return NULL;
    if (get_image_buffer(out_object, &out, PyBUF_WRITABLE, "f", 1, "out") < 0) {
        PyBuffer_Release(&images);
        return NULL;
    }
    if (images.shape[0] != out.shape[0] || images.shape[1] != out.shape[2] || images.shape[2] != out.shape[3]) {
        PyErr_Format(PyExc_ValueError, "out: shape (%zd, 3, %zd, %zd) does not match images (%zd, %zd, %zd, 3)",
                     out.shape[0], out.shape[2], out.shape[3], images.shape[0], images.shape[1], images.shape[2]);
    } else if (get_flags(mirror_object, &mirror, images.shape[0]) == 0) {
        Py_BEGIN_ALLOW_THREADS
        normalize_images(images.buf, out.buf, images.shape[0], images.shape[1], images.shape[2], mean, inv_std,
                         mirror.buf);
        Py_END_ALLOW_THREADS
        if (mirror.buf != NULL)
            PyBuffer_Release(&mirror);
    }
    PyBuffer_Release(&images);
    PyBuffer_Release(&out);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *mirror(PyObject *module, PyObject *args) {
    PyObject *images_object, *flags_object;
    if (!PyArg_ParseTuple(args, "OO:mirror", &images_object, &flags_object))
        return NULL;
    Py_buffer images, flags;
    if (get_image_buffer(images_object, &images, PyBUF_WRITABLE, "B", 3, "images") < 0)
        return NULL;
    if (get_flags(flags_object, &flags, images.shape[0]) == 0 && flags.buf != NULL) {
        Py_BEGIN_ALLOW_THREADS
        mirror_images(images.buf, images.shape[0], images.shape[1], images.shape[2], flags.buf);
        Py_END_ALLOW_THREADS
        PyBuffer_Release(&flags);
    }
    PyBuffer_Release(&images);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *jitter_hls(PyObject *module, PyObject *args) {
    PyObject *images_object, *deltas_object;
    if (!PyArg_ParseTuple(args, "OO:jitter_hls", &images_object, &deltas_object))
        return NULL;
    Py_buffer images, deltas;
    if (get_image_buffer(images_object, &images, PyBUF_WRITABLE, "B", 3, "images") < 0)
        return NULL;
    if (PyObject_GetBuffer(deltas_object, &deltas, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&images);
        return NULL;
    }
    if (strcmp(deltas.format, "f") != 0 || deltas.len != images.shape[0] * 3 * (Py_ssize_t)sizeof(float)) {
        PyErr_Format(PyExc_ValueError, "deltas: expected float32 (%zd, 3), one (H, L, S) row an image",
                     images.shape[0]);
    } else {
        Py_BEGIN_ALLOW_THREADS
        jitter_images(images.buf, images.shape[0], images.shape[1] * images.shape[2], deltas.buf);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&deltas);
    PyBuffer_Release(&images);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"normalize", normalize, METH_VARARGS,
     "normalize(images, out, mean, inv_std, mirror=None): uint8 NHWC -> float32 NCHW (x - mean) * inv_std,\n"
     "flipping left to right the images whose `mirror` flag is set; GIL released."},
    {"jitter_hls", jitter_hls, METH_VARARGS,
     "jitter_hls(images, deltas): adds float32 (H, L, S) deltas per image in OpenCV's 8-bit HLS units to\n"
     "uint8 NHWC RGB images, in place; GIL released."},
    {"mirror", mirror, METH_VARARGS,
     "mirror(images, flags): flips the flagged uint8 NHWC images left to right, in place; GIL released."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "flow._pixels", NULL, 0, methods};

PyMODINIT_FUNC PyInit__pixels(void) { return PyModule_Create(&module); }
