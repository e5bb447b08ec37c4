/* sctrain.audio._cpu_kernels: the two passes of the training front end that PyTorch does slowly on a CPU.
 *
 * Both do what a chain of PyTorch ops does (sctrain/augment.py and sctrain/features.py hold that path, which
 * GPUs and exports use), in one pass over the data instead of several. sctrain/audio/cpu_kernels.py is the Python
 * side: it draws nothing, builds the arguments and checks dtypes and layout. This file checks every size and
 * index against the buffers it is given, so a wrong call raises ValueError instead of reading out of bounds.
 * Rows are shared between up to `threads` POSIX threads; the GIL is released throughout.
 *
 * augment_wave(audio, is_int16, length, out, shift, gain, bank, noise_start, noise_mult, rms_floor, threads)
 *   WaveAugment's gain, time shift and additive noise for a batch of clips (rows):
 *     y[i] = gain * audio[i - shift]          (0 where i - shift is outside the clip)
 *     y[i] += max(rms(y), rms_floor) * noise_mult * bank[noise_start + i]
 *   audio        rows x length, int16 (is_int16=1) or float32
 *   out          writable float32, rows x length
 *   shift        int64 per row          gain        float32 per row (int16 scaling included)
 *   bank         float32 noise windows are cut from; noise_start (int64 per row) is a flat index into it
 *   noise_mult   float32 per row: 1 / (noise RMS x 10^(SNR/20)), 0 for rows that get no noise
 *   The torch path makes the same per-row draws; the clip RMS is summed in double here, in float32 there.
 *
 * mel_power(spec, bins, out, bands, weights, offset, threads)
 *   LogMel's (re^2 + im^2) @ filterbank + offset: each frame's power is formed in a small buffer and projected
 *   onto the mel bands at once, over each band's non-zero weights only (about 500 for 64 bands and 257 bins,
 *   against 16,448 in the dense matrix). torch makes four passes over the spectrum for this.
 *   spec     float32, rows x bins x 2 (re, im): view_as_real of a frames-major complex spectrum
 *   out      writable float32, rows x n_mels
 *   bands    int32, n_mels x 3: first bin, bin count and start in `weights` of each band
 *   weights  float32: each band's filterbank weights over its bins, band after band
 *   offset   added to every energy (LogMel's floor before the log)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#define MAX_THREADS 64
/* Rows a thread takes at a time: clips for augment_wave, frames for mel_power (a few clips' worth), about
 * 0.1 ms of work each, so that threads share the rows evenly and take the shared counter rarely. */
#define AUGMENT_CHUNK 4
#define MEL_CHUNK 256

/* ------------------------------------------------------------------------------------------ threading */

typedef int (*RowsFn)(const void *args, Py_ssize_t begin, Py_ssize_t end); /* 0 on success */

typedef struct {
    RowsFn fn;
    const void *args;
    Py_ssize_t rows, chunk;
    Py_ssize_t next; /* the first row no thread has taken yet (atomic) */
    int status;      /* the first failure (atomic) */
} Work;

/* Takes chunks of rows until none are left. Threads share the rows dynamically, not in fixed shares: on a
 * small or shared machine another thread may get a core late (or half of one), and the others then do
 * its part instead of waiting for it. */
static void *take_rows(void *arg)
{
    Work *work = (Work *)arg;
    for (;;) {
        const Py_ssize_t begin = __atomic_fetch_add(&work->next, work->chunk, __ATOMIC_RELAXED);
        if (begin >= work->rows)
            return NULL;
        const Py_ssize_t end = begin + work->chunk < work->rows ? begin + work->chunk : work->rows;
        const int status = work->fn(work->args, begin, end);
        if (status != 0) {
            int ok = 0;
            __atomic_compare_exchange_n(&work->status, &ok, status, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
        }
    }
}

/* Runs fn over rows [0, rows) on the calling thread and up to threads - 1 more, in chunks of `chunk` rows;
 * if a thread cannot be started the others do its part. Returns the first non-zero status. Call without
 * the GIL. */
static int run_rows(RowsFn fn, const void *args, Py_ssize_t rows, Py_ssize_t chunk, int threads)
{
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    if (threads < 1)
        threads = 1;
    Work work = {fn, args, rows, chunk > 0 ? chunk : 1, 0, 0};
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&ids[t], NULL, take_rows, &work) == 0;
    take_rows(&work);
    for (int t = 1; t < threads; t++)
        if (started[t])
            pthread_join(ids[t], NULL);
    return work.status;
}

static int check_len(const char *fn, const char *name, const Py_buffer *buf, Py_ssize_t count, Py_ssize_t itemsize)
{
    if (buf->len != count * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: %s has %zd bytes, expected %zd items of %zd bytes", fn, name,
                     buf->len, count, itemsize);
        return -1;
    }
    return 0;
}

/* -------------------------------------------------------------------------------------- augment_wave */

typedef struct {
    const void *audio;
    int is_int16;
    Py_ssize_t length;
    float *out;
    const int64_t *shift, *noise_start;
    const float *gain, *noise_mult, *bank;
    float rms_floor;
} AugmentArgs;

static int augment_rows(const void *vargs, Py_ssize_t begin, Py_ssize_t end)
{
    const AugmentArgs *a = (const AugmentArgs *)vargs;
    const Py_ssize_t n = a->length;
    for (Py_ssize_t r = begin; r < end; r++) {
        float *y = a->out + r * n;
        const float gain = a->gain[r];
        /* Samples i in [lo, hi) come from audio[i - shift]; the rest is silence. */
        const int64_t shift = a->shift[r];
        const Py_ssize_t lo = shift > 0 ? (shift < n ? (Py_ssize_t)shift : n) : 0;
        const Py_ssize_t hi = shift < 0 ? (-shift < n ? n + (Py_ssize_t)shift : 0) : n;
        for (Py_ssize_t i = 0; i < lo; i++)
            y[i] = 0.0f;
        if (a->is_int16) {
            const int16_t *x = (const int16_t *)a->audio + r * n;
            for (Py_ssize_t i = lo; i < hi; i++)
                y[i] = (float)x[i - shift] * gain;
        } else {
            const float *x = (const float *)a->audio + r * n;
            for (Py_ssize_t i = lo; i < hi; i++)
                y[i] = x[i - shift] * gain;
        }
        for (Py_ssize_t i = hi > lo ? hi : lo; i < n; i++)
            y[i] = 0.0f;
        if (a->noise_mult[r] == 0.0f)
            continue;
        double energy = 0.0;
        for (Py_ssize_t i = lo; i < hi; i++)
            energy += (double)y[i] * y[i];
        float rms = (float)sqrt(energy / (double)n);
        if (!(rms > a->rms_floor))
            rms = a->rms_floor;
        const float scale = rms * a->noise_mult[r];
        const float *noise = a->bank + a->noise_start[r];
        for (Py_ssize_t i = 0; i < n; i++)
            y[i] += noise[i] * scale;
    }
    return 0;
}

static PyObject *augment_wave(PyObject *self, PyObject *args)
{
    Py_buffer audio, out, shift, gain, bank, noise_start, noise_mult;
    int is_int16, threads;
    Py_ssize_t length;
    float rms_floor;
    if (!PyArg_ParseTuple(args, "y*pnw*y*y*y*y*y*fi", &audio, &is_int16, &length, &out, &shift, &gain, &bank,
                          &noise_start, &noise_mult, &rms_floor, &threads))
        return NULL;
    PyObject *result = NULL;
    const char *fn = "augment_wave";
    const Py_ssize_t rows = gain.len / (Py_ssize_t)sizeof(float);
    const Py_ssize_t bank_len = bank.len / (Py_ssize_t)sizeof(float);
    if (length <= 0) {
        PyErr_Format(PyExc_ValueError, "%s: length must be > 0, got %zd", fn, length);
        goto done;
    }
    if (check_len(fn, "audio", &audio, rows * length, is_int16 ? 2 : 4) ||
        check_len(fn, "out", &out, rows * length, 4) || check_len(fn, "shift", &shift, rows, 8) ||
        check_len(fn, "noise_start", &noise_start, rows, 8) || check_len(fn, "noise_mult", &noise_mult, rows, 4))
        goto done;
    const int64_t *starts = (const int64_t *)noise_start.buf;
    const float *mults = (const float *)noise_mult.buf;
    for (Py_ssize_t r = 0; r < rows; r++) {
        if (mults[r] != 0.0f && (starts[r] < 0 || starts[r] + length > bank_len)) {
            PyErr_Format(PyExc_ValueError, "%s: row %zd's noise window [%lld, %lld) is outside the bank of %zd "
                         "samples", fn, r, (long long)starts[r], (long long)(starts[r] + length), bank_len);
            goto done;
        }
    }
    AugmentArgs job = {audio.buf, is_int16, length, out.buf, shift.buf, starts, gain.buf, mults, bank.buf,
                       rms_floor};
    Py_BEGIN_ALLOW_THREADS
    run_rows(augment_rows, &job, rows, AUGMENT_CHUNK, threads);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyBuffer_Release(&audio);
    PyBuffer_Release(&out);
    PyBuffer_Release(&shift);
    PyBuffer_Release(&gain);
    PyBuffer_Release(&bank);
    PyBuffer_Release(&noise_start);
    PyBuffer_Release(&noise_mult);
    return result;
}

/* ----------------------------------------------------------------------------------------- mel_power */

typedef struct {
    const float *spec;
    float *out;
    const int32_t *bands;
    const float *weights;
    float offset;
    Py_ssize_t bins, n_mels;
} MelArgs;

static int mel_rows(const void *vargs, Py_ssize_t begin, Py_ssize_t end)
{
    const MelArgs *a = (const MelArgs *)vargs;
    float *power = malloc(sizeof(float) * (size_t)a->bins);
    if (power == NULL)
        return -1;
    for (Py_ssize_t r = begin; r < end; r++) {
        const float *x = a->spec + r * a->bins * 2;
        for (Py_ssize_t k = 0; k < a->bins; k++)
            power[k] = x[2 * k] * x[2 * k] + x[2 * k + 1] * x[2 * k + 1];
        float *o = a->out + r * a->n_mels;
        for (Py_ssize_t m = 0; m < a->n_mels; m++) {
            const int32_t *band = a->bands + 3 * m;
            const float *p = power + band[0], *w = a->weights + band[2];
            float sum = 0.0f;
            for (int32_t k = 0; k < band[1]; k++)
                sum += p[k] * w[k];
            o[m] = sum + a->offset;
        }
    }
    free(power);
    return 0;
}

static PyObject *mel_power(PyObject *self, PyObject *args)
{
    Py_buffer spec, out, bands, weights;
    Py_ssize_t bins;
    float offset;
    int threads;
    if (!PyArg_ParseTuple(args, "y*nw*y*y*fi", &spec, &bins, &out, &bands, &weights, &offset, &threads))
        return NULL;
    PyObject *result = NULL;
    const char *fn = "mel_power";
    const Py_ssize_t n_mels = bands.len / (Py_ssize_t)(3 * sizeof(int32_t));
    const Py_ssize_t n_weights = weights.len / (Py_ssize_t)sizeof(float);
    const Py_ssize_t rows = bins > 0 ? spec.len / (Py_ssize_t)(2 * sizeof(float) * bins) : 0;
    if (bins <= 0 || n_mels == 0) {
        PyErr_Format(PyExc_ValueError, "%s: need bins > 0 and at least one band, got %zd and %zd", fn, bins, n_mels);
        goto done;
    }
    if (check_len(fn, "spec", &spec, rows * bins * 2, 4) || check_len(fn, "bands", &bands, n_mels * 3, 4) ||
        check_len(fn, "out", &out, rows * n_mels, 4))
        goto done;
    const int32_t *table = (const int32_t *)bands.buf;
    for (Py_ssize_t m = 0; m < n_mels; m++) {
        const int32_t lo = table[3 * m], count = table[3 * m + 1], start = table[3 * m + 2];
        if (lo < 0 || count < 0 || start < 0 || lo + count > bins || start + count > n_weights) {
            PyErr_Format(PyExc_ValueError, "%s: band %zd (bins %d+%d, weights %d+%d) is outside %zd bins or "
                         "%zd weights", fn, m, lo, count, start, count, bins, n_weights);
            goto done;
        }
    }
    MelArgs job = {spec.buf, out.buf, table, weights.buf, offset, bins, n_mels};
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = run_rows(mel_rows, &job, rows, MEL_CHUNK, threads);
    Py_END_ALLOW_THREADS
    if (status != 0) {
        PyErr_NoMemory();
        goto done;
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyBuffer_Release(&spec);
    PyBuffer_Release(&out);
    PyBuffer_Release(&bands);
    PyBuffer_Release(&weights);
    return result;
}

static PyMethodDef methods[] = {
    {"augment_wave", augment_wave, METH_VARARGS,
     "augment_wave(audio, is_int16, length, out, shift, gain, bank, noise_start, noise_mult, rms_floor, threads)"},
    {"mel_power", mel_power, METH_VARARGS, "mel_power(spec, bins, out, bands, weights, offset, threads)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpu_kernels",
                                    "Fused CPU passes of sctrain's front end (see sctrain/audio/csrc/cpu_kernels.c).",
                                    -1, methods};

PyMODINIT_FUNC PyInit__cpu_kernels(void) { return PyModule_Create(&module); }
