/* flow._resample: one pass from decoded pixels to the output slot, resampling only what the crop keeps.
 *
 * resample(src, out, crop, size, origin, method): `crop` = (top, left, height, width) is a window of
 * the RGB uint8 image `src` (H, W, 3); it is resized to `size` = (height, width), and of that
 * resized image only the part at `origin` = (top, left) the size of `out` (h, w, 3) is computed and
 * written into `out`. So "resize the shorter side, then crop" computes only the crop's pixels, and
 * "crop a window, then resize it" reads only the window; neither goes through Pillow, whose
 * round trip (RGB -> RGBX -> RGB copies, and resizing the whole image) was 64% of the loader's time
 * on photos.
 *
 * The arithmetic is Pillow's (libImaging/Resample.c, Image.resize without reducing_gap): the same
 * filters (1 bilinear, 2 bicubic, 3 box = area, 4 lanczos) and support widened by the scale when
 * shrinking, coefficients computed in double then rounded to 22-bit fixed point, a horizontal pass
 * rounded to uint8 then a vertical one; 0 (nearest) is Pillow's affine nearest-neighbour scaling.
 * So the output equals Pillow's `Image.fromarray(src[crop]).resize(size)` cropped at `origin` to the
 * bit (tests/test_resample.py), which is what flow did before. The GIL is released while it runs.
 *
 * An optional `box` = (y0, x0, y1, x1), in pixels of the crop and possibly fractional, is the part of
 * the crop that is resized to `size` (as Pillow's resize(box=...)), its filter still reading only the
 * crop's pixels: so a window drawn on the full-size image maps exactly onto an image decoded at 1/2
 * or 1/4 of its size (libjpeg-turbo's DCT scaling), whose pixel i covers full-size pixels 2i, 2i+1.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PRECISION_BITS (32 - 8 - 2)

typedef double (*filter_function)(double);

static double box_filter(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

static double bilinear_filter(double x) {
    if (x < 0.0)
        x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

static double bicubic_filter(double x) {
    const double a = -0.5;
    if (x < 0.0)
        x = -x;
    if (x < 1.0)
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0)
        return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

static double sinc_filter(double x) {
    if (x == 0.0)
        return 1.0;
    x = x * M_PI;
    return sin(x) / x;
}

static double lanczos_filter(double x) { return (-3.0 <= x && x < 3.0) ? sinc_filter(x) * sinc_filter(x / 3) : 0.0; }

/* One axis: for output positions first..first+count of an in_size -> out_size resize, the first
 * source index, the number of source pixels and their fixed-point weights (ksize a position). */
typedef struct {
    int ksize;
    int *start, *length;
    int32_t *weights;
} axis_coefficients;

static void free_axis(axis_coefficients *axis) {
    free(axis->start);
    free(axis->length);
    free(axis->weights);
}

/* The source span [in0, in0 + in_span) of `in_size` pixels is what is resized to out_size. */
static int axis_coefficients_for(axis_coefficients *axis, int in_size, double in0, double in_span, int out_size,
                                 int first, int count, filter_function filter, double filter_support) {
    double scale = in_span / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = filter_support * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    ksize += ksize & 1;  /* even, zero-padded: the AVX2 pass reads the weights in pairs */
    axis->ksize = ksize;
    axis->start = malloc(sizeof(int) * count);
    axis->length = malloc(sizeof(int) * count);
    axis->weights = malloc(sizeof(int32_t) * (size_t)count * ksize);
    double *weights = malloc(sizeof(double) * ksize);
    if (!axis->start || !axis->length || !axis->weights || !weights) {
        free(weights);
        free_axis(axis);
        return -1;
    }
    for (int i = 0; i < count; i++) {
        double center = in0 + (first + i + 0.5) * scale, total = 0.0, step = 1.0 / filterscale;
        int low = (int)(center - support + 0.5), high = (int)(center + support + 0.5);
        if (low < 0)
            low = 0;
        if (high > in_size)
            high = in_size;
        high -= low;
        for (int x = 0; x < high; x++) {
            weights[x] = filter((x + low - center + 0.5) * step);
            total += weights[x];
        }
        int32_t *fixed = axis->weights + (size_t)i * ksize;
        for (int x = 0; x < ksize; x++) {
            double w = x < high ? (total != 0.0 ? weights[x] / total : weights[x]) : 0.0;
            fixed[x] = w < 0 ? (int32_t)(-0.5 + w * (1 << PRECISION_BITS)) : (int32_t)(0.5 + w * (1 << PRECISION_BITS));
        }
        axis->start[i] = low;
        axis->length[i] = high;
    }
    free(weights);
    return 0;
}

static inline uint8_t clip8(int32_t value) {
    value >>= PRECISION_BITS;
    return value < 0 ? 0 : (value > 255 ? 255 : (uint8_t)value);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX2 1
/* AVX2 versions of the two passes, chosen at run time on CPUs that have it: the same integer sums
 * (32-bit products of the 22-bit weights, added in another order: integers, so the same result to
 * the bit), 8 at a time. The horizontal pass was 2/3 of the resample's time pixel by pixel. */

/* One row: each output pixel sums its source pixels two at a time, R G B _ R G B _ in eight lanes.
 * It reads up to 5 bytes past the last pixel its weights cover (their weight is 0): the caller
 * keeps it for rows that have them inside the buffer. (Summing all ksize weights, the zero ones
 * too, to spare the loop's varying exit: 1.5x slower on the bench's crops.) */
__attribute__((target("avx2"))) static void horizontal_row_avx2(const uint8_t *row, uint8_t *out, int count,
                                                                const axis_coefficients *columns) {
    const __m128i spread = _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i pair = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    const __m128i half = _mm_set1_epi32(1 << (PRECISION_BITS - 1));
    for (int x = 0; x < count; x++) {
        const int32_t *k = columns->weights + (size_t)x * columns->ksize;
        const uint8_t *pixel = row + (Py_ssize_t)columns->start[x] * 3;
        __m256i sum = _mm256_setzero_si256();
        for (int i = 0; i < columns->length[x]; i += 2, pixel += 6) {
            __m256i values = _mm256_cvtepu8_epi32(_mm_shuffle_epi8(_mm_loadl_epi64((const __m128i *)pixel), spread));
            __m256i weights = _mm256_permutevar8x32_epi32(
                _mm256_castsi128_si256(_mm_loadl_epi64((const __m128i *)(k + i))), pair);
            sum = _mm256_add_epi32(sum, _mm256_mullo_epi32(values, weights));
        }
        __m128i total = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        total = _mm_srai_epi32(_mm_add_epi32(total, half), PRECISION_BITS);
        total = _mm_packus_epi16(_mm_packs_epi32(total, total), total);  /* clip8's clamp */
        uint32_t rgb = (uint32_t)_mm_cvtsi128_si32(total);
        memcpy(out + 3 * x, &rgb, x + 1 < count ? 4 : 3);  /* the 4th byte is the next pixel's, written next */
    }
}

/* Sixteen bytes of an output row at a time, their sums kept in registers across the taps. */
__attribute__((target("avx2"))) static void vertical_pass_avx2(const uint8_t *src, Py_ssize_t src_stride,
                                                               uint8_t *dst, Py_ssize_t dst_stride, int count,
                                                               Py_ssize_t row_bytes, const axis_coefficients *rows,
                                                               int row_offset) {
    const __m256i half = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));
    for (int y = 0; y < count; y++) {
        const int32_t *k = rows->weights + (size_t)y * rows->ksize;
        const uint8_t *first = src + (Py_ssize_t)(rows->start[y] - row_offset) * src_stride;
        uint8_t *out = dst + y * dst_stride;
        Py_ssize_t x = 0;
        for (; x + 16 <= row_bytes; x += 16) {
            __m256i low = half, high = half;
            const uint8_t *column = first + x;
            for (int i = 0; i < rows->length[y]; i++, column += src_stride) {
                __m128i bytes = _mm_loadu_si128((const __m128i *)column);
                __m256i weight = _mm256_set1_epi32(k[i]);
                low = _mm256_add_epi32(low, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(bytes), weight));
                high = _mm256_add_epi32(high, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8)), weight));
            }
            __m256i words = _mm256_packs_epi32(_mm256_srai_epi32(low, PRECISION_BITS),
                                               _mm256_srai_epi32(high, PRECISION_BITS));
            words = _mm256_permute4x64_epi64(words, 0xD8);  /* packs works within 128-bit halves */
            _mm_storeu_si128((__m128i *)(out + x), _mm_packus_epi16(_mm256_castsi256_si128(words),
                                                                    _mm256_extracti128_si256(words, 1)));
        }
        for (; x < row_bytes; x++) {
            int32_t sum = 1 << (PRECISION_BITS - 1);
            for (int i = 0; i < rows->length[y]; i++)
                sum += first[i * src_stride + x] * k[i];
            out[x] = clip8(sum);
        }
    }
}
#endif

static int use_avx2;  /* set at import on CPUs with AVX2; tests switch it to check both paths */


static void horizontal_row(const uint8_t *row, uint8_t *out, int count, const axis_coefficients *columns) {
    for (int x = 0; x < count; x++) {
        const int32_t *k = columns->weights + (size_t)x * columns->ksize;
        const uint8_t *pixel = row + (Py_ssize_t)columns->start[x] * 3;
        int32_t red = 1 << (PRECISION_BITS - 1), green = red, blue = red;
        for (int i = 0; i < columns->length[x]; i++, pixel += 3) {
            red += pixel[0] * k[i];
            green += pixel[1] * k[i];
            blue += pixel[2] * k[i];
        }
        out[3 * x] = clip8(red);
        out[3 * x + 1] = clip8(green);
        out[3 * x + 2] = clip8(blue);
    }
}

/* rows x columns.count pixels of `dst` (row stride dst_stride bytes) from the rows of `src` (stride
 * src_stride, its buffer ending at src_end), weighting source columns as `columns` says. */
static void horizontal_pass(const uint8_t *src, Py_ssize_t src_stride, const uint8_t *src_end, uint8_t *dst,
                            Py_ssize_t dst_stride, int rows, int count, const axis_coefficients *columns) {
#ifdef HAVE_AVX2
    Py_ssize_t reach = 0;  /* the bytes past a row's start that the AVX2 pass reads */
    for (int x = 0; x < count; x++) {
        Py_ssize_t end = ((Py_ssize_t)columns->start[x] + ((columns->length[x] - 1) & ~1)) * 3 + 8;
        reach = end > reach ? end : reach;
    }
#endif
    for (int y = 0; y < rows; y++) {
        const uint8_t *row = src + y * src_stride;
        uint8_t *out = dst + y * dst_stride;
#ifdef HAVE_AVX2
        if (use_avx2 && row + reach <= src_end) {
            horizontal_row_avx2(row, out, count, columns);
            continue;
        }
#endif
        horizontal_row(row, out, count, columns);
    }
}

/* Output row y of `rows` from rows start[y]..start[y]+length[y] of `src` (relative to `src`), a
 * source row at a time into `sums` (row_bytes int32s): the inner loop runs along a row, which the
 * compiler vectorizes (integer sums: the same result as a pixel at a time, ~3x faster). */
static void vertical_pass(const uint8_t *src, Py_ssize_t src_stride, uint8_t *dst, Py_ssize_t dst_stride,
                          int count, Py_ssize_t row_bytes, const axis_coefficients *rows, int row_offset,
                          int32_t *sums) {
    for (int y = 0; y < count; y++) {
        const int32_t *k = rows->weights + (size_t)y * rows->ksize;
        const uint8_t *first = src + (Py_ssize_t)(rows->start[y] - row_offset) * src_stride;
        uint8_t *out = dst + y * dst_stride;
        for (Py_ssize_t x = 0; x < row_bytes; x++)
            sums[x] = 1 << (PRECISION_BITS - 1);
        for (int i = 0; i < rows->length[y]; i++) {
            const uint8_t *row = first + i * src_stride;
            const int32_t weight = k[i];
            for (Py_ssize_t x = 0; x < row_bytes; x++)
                sums[x] += row[x] * weight;
        }
        for (Py_ssize_t x = 0; x < row_bytes; x++)
            out[x] = clip8(sums[x]);
    }
}

static int vertical_pass_with_sums(const uint8_t *src, Py_ssize_t src_stride, uint8_t *dst, Py_ssize_t dst_stride,
                                   int count, Py_ssize_t row_bytes, const axis_coefficients *rows, int row_offset) {
#ifdef HAVE_AVX2
    if (use_avx2) {
        vertical_pass_avx2(src, src_stride, dst, dst_stride, count, row_bytes, rows, row_offset);
        return 0;
    }
#endif
    int32_t *sums = malloc(sizeof(int32_t) * (size_t)row_bytes);
    if (sums == NULL)
        return -1;
    vertical_pass(src, src_stride, dst, dst_stride, count, row_bytes, rows, row_offset, sums);
    free(sums);
    return 0;
}

/* Pillow's ImagingScaleAffine: source index floor(in0 + a0 * (x + 0.5)) accumulated in double. */
static void nearest_indices(int *indices, int in_size, double in0, double in_span, int out_size, int first,
                            int count) {
    double step = in_span / out_size, position = in0 + step * 0.5;
    for (int i = 0; i < first; i++)
        position += step;
    for (int i = 0; i < count; i++, position += step) {
        int index = position < 0.0 ? -1 : (int)position;
        indices[i] = index < 0 ? 0 : (index >= in_size ? in_size - 1 : index);
    }
}

typedef struct {
    const uint8_t *src, *src_end;  /* the crop's top-left pixel, the end of its buffer */
    Py_ssize_t src_stride;
    int crop_height, crop_width, height, width, top, left, out_height, out_width, method;
    double box_top, box_left, box_height, box_width;  /* the part of the crop resized, in crop pixels */
    uint8_t *out;
} job;

static int run_nearest(const job *j) {
    int *rows = malloc(sizeof(int) * j->out_height), *columns = malloc(sizeof(int) * j->out_width);
    if (!rows || !columns) {
        free(rows);
        free(columns);
        return -1;
    }
    nearest_indices(rows, j->crop_height, j->box_top, j->box_height, j->height, j->top, j->out_height);
    nearest_indices(columns, j->crop_width, j->box_left, j->box_width, j->width, j->left, j->out_width);
    for (int y = 0; y < j->out_height; y++) {
        const uint8_t *row = j->src + rows[y] * j->src_stride;
        uint8_t *out = j->out + (Py_ssize_t)y * j->out_width * 3;
        for (int x = 0; x < j->out_width; x++)
            memcpy(out + 3 * x, row + 3 * (Py_ssize_t)columns[x], 3);
    }
    free(rows);
    free(columns);
    return 0;
}

static int run_filter(const job *j) {
    static const filter_function filters[] = {NULL, bilinear_filter, bicubic_filter, box_filter, lanczos_filter};
    static const double supports[] = {0.0, 1.0, 2.0, 0.5, 3.0};
    /* An axis is used as it is only when the resize keeps its pixels where they are. */
    const int horizontal = j->width != j->box_width || j->box_left != 0.0 || j->box_width != j->crop_width;
    const int vertical = j->height != j->box_height || j->box_top != 0.0 || j->box_height != j->crop_height;
    const Py_ssize_t out_stride = (Py_ssize_t)j->out_width * 3;
    axis_coefficients columns = {0}, rows = {0};
    if (horizontal && axis_coefficients_for(&columns, j->crop_width, j->box_left, j->box_width, j->width, j->left,
                                            j->out_width, filters[j->method], supports[j->method]) < 0)
        return -1;
    if (vertical && axis_coefficients_for(&rows, j->crop_height, j->box_top, j->box_height, j->height, j->top,
                                          j->out_height, filters[j->method], supports[j->method]) < 0) {
        free_axis(&columns);
        return -1;
    }
    /* The source rows the output needs: all of the crop's a vertical pass reads, else the window's. */
    int first_row = j->top, last_row = j->top + j->out_height;
    if (vertical) {
        first_row = rows.start[0];
        last_row = rows.start[j->out_height - 1] + rows.length[j->out_height - 1];
    }
    int status = 0;
    if (!horizontal) {  /* columns used as they are */
        const uint8_t *window = j->src + (Py_ssize_t)j->left * 3;
        if (vertical)
            status = vertical_pass_with_sums(window + first_row * j->src_stride, j->src_stride, j->out, out_stride,
                                             j->out_height, out_stride, &rows, first_row);
        else
            for (int y = 0; y < j->out_height; y++)
                memcpy(j->out + y * out_stride, window + (Py_ssize_t)(j->top + y) * j->src_stride, out_stride);
    } else if (!vertical) {
        horizontal_pass(j->src + (Py_ssize_t)j->top * j->src_stride, j->src_stride, j->src_end, j->out, out_stride,
                        j->out_height, j->out_width, &columns);
    } else {
        uint8_t *between = malloc((size_t)(last_row - first_row) * out_stride);
        if (between == NULL) {
            status = -1;
        } else {
            horizontal_pass(j->src + (Py_ssize_t)first_row * j->src_stride, j->src_stride, j->src_end, between, out_stride,
                            last_row - first_row, j->out_width, &columns);
            status = vertical_pass_with_sums(between, out_stride, j->out, out_stride, j->out_height, out_stride, &rows,
                                             first_row);
            free(between);
        }
    }
    free_axis(&columns);
    free_axis(&rows);
    return status;
}

static int get_rgb(PyObject *object, Py_buffer *view, int flags, const char *name) {
    if (PyObject_GetBuffer(object, view, flags | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    if (view->ndim != 3 || view->shape[2] != 3 || strcmp(view->format, "B") != 0) {
        PyErr_Format(PyExc_ValueError, "%s: expected a C-contiguous uint8 array of shape (height, width, 3)", name);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *resample(PyObject *module, PyObject *args) {
    PyObject *src_object, *out_object;
    int crop_top, crop_left, top;
    double box_bottom = -1.0, box_right = -1.0;
    job j;
    j.box_top = j.box_left = 0.0;
    if (!PyArg_ParseTuple(args, "OO(iiii)(ii)(ii)i|(dddd):resample", &src_object, &out_object, &crop_top, &crop_left,
                          &j.crop_height, &j.crop_width, &j.height, &j.width, &top, &j.left, &j.method, &j.box_top,
                          &j.box_left, &box_bottom, &box_right))
        return NULL;
    j.top = top;
    if (box_bottom < 0.0) {  /* no box: the whole crop */
        box_bottom = j.crop_height;
        box_right = j.crop_width;
    }
    j.box_height = box_bottom - j.box_top;
    j.box_width = box_right - j.box_left;
    Py_buffer src, out;
    if (get_rgb(src_object, &src, PyBUF_SIMPLE, "src") < 0)
        return NULL;
    if (get_rgb(out_object, &out, PyBUF_WRITABLE, "out") < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    j.out_height = (int)out.shape[0];
    j.out_width = (int)out.shape[1];
    if (j.method < 0 || j.method > 4) {
        PyErr_Format(PyExc_ValueError, "method: expected 0-4 (nearest, bilinear, bicubic, area, lanczos), got %d",
                     j.method);
    } else if (crop_top < 0 || crop_left < 0 || j.crop_height < 1 || j.crop_width < 1 ||
               crop_top + j.crop_height > src.shape[0] || crop_left + j.crop_width > src.shape[1]) {
        PyErr_Format(PyExc_ValueError, "crop (%d, %d, %d, %d) is not inside the %zdx%zd image", crop_top, crop_left,
                     j.crop_height, j.crop_width, src.shape[0], src.shape[1]);
    } else if (!(j.box_top >= 0.0 && j.box_left >= 0.0 && j.box_height > 0.0 && j.box_width > 0.0 &&
                 box_bottom <= j.crop_height && box_right <= j.crop_width)) {
        PyErr_Format(PyExc_ValueError, "box (%R) is not inside the %dx%d crop", PyTuple_GetItem(args, 6),
                     j.crop_height, j.crop_width);
    } else if (j.top < 0 || j.left < 0 || j.out_height < 1 || j.out_width < 1 ||
               j.top + j.out_height > j.height || j.left + j.out_width > j.width) {
        PyErr_Format(PyExc_ValueError, "out (%d x %d at %d, %d) is not inside the resized %dx%d image",
                     j.out_height, j.out_width, j.top, j.left, j.height, j.width);
    } else {
        j.src_stride = src.shape[1] * 3;
        j.src = (const uint8_t *)src.buf + crop_top * j.src_stride + (Py_ssize_t)crop_left * 3;
        j.src_end = (const uint8_t *)src.buf + src.len;
        j.out = out.buf;
        int status;
        Py_BEGIN_ALLOW_THREADS
        status = j.method == 0 ? run_nearest(&j) : run_filter(&j);
        Py_END_ALLOW_THREADS
        if (status < 0)
            PyErr_NoMemory();
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *simd(PyObject *module, PyObject *args) {
    int wanted = -1;
    if (!PyArg_ParseTuple(args, "|p:simd", &wanted))
        return NULL;
#ifdef HAVE_AVX2
    if (wanted >= 0)
        use_avx2 = wanted && __builtin_cpu_supports("avx2");
#endif
    return PyBool_FromLong(use_avx2);
}

static PyMethodDef methods[] = {
    {"resample", resample, METH_VARARGS,
     "resample(src, out, crop, size, origin, method[, box]): resizes the (top, left, height, width) `crop`\n"
     "of the uint8 (H, W, 3) `src` (or only its `box` (y0, x0, y1, x1), floats in crop pixels) to `size`\n"
     "(height, width) and writes the part at `origin` (top, left) the size of `out` into `out`, with\n"
     "Pillow's arithmetic; method 0 nearest, 1 bilinear, 2 bicubic, 3 area (box), 4 lanczos. GIL released."},
    {"simd", simd, METH_VARARGS,
     "simd([on]): whether the AVX2 passes run (on CPUs with AVX2, the default); `on` switches them (tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "flow._resample", NULL, 0, methods};

PyMODINIT_FUNC PyInit__resample(void) {
#ifdef HAVE_AVX2
    use_avx2 = __builtin_cpu_supports("avx2");
#endif
    return PyModule_Create(&module);
}
