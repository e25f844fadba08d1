/*
 * cdbdump._pagebatch: compress a batch of pages in one call, the GIL released.
 *
 * reference: makedumpfile write_kdump_page: every page is compressed on its own,
 * and the compressed form is kept only when it is strictly smaller than the page;
 * otherwise the page is stored raw (page_desc flags 0, size = page size).
 *   zlib:   compress2(..., Z_BEST_SPEED)   (here: one deflate stream, deflateReset
 *           between pages; same parameters, same bytes)
 *   lzo:    lzo1x_1_compress(..., wrkmem) with LZO1X_1_MEM_COMPRESS of work memory
 *   snappy: snappy_compress (raw format)
 *   zstd:   ZSTD_compressCCtx(cctx, ..., level 1) into ZSTD_compressBound bytes, one
 *           ZSTD_CCtx reused page after page (makedumpfile keeps one per thread;
 *           here: one per calling thread, kept until that thread exits)
 *
 * Built by setup.py when a C compiler and zlib's headers exist; LZO, snappy and
 * zstd only when liblzo2's, libsnappy's and libzstd's headers do (CDBDUMP_HAVE_LZO,
 * CDBDUMP_HAVE_SNAPPY, CDBDUMP_HAVE_ZSTD). The module attribute CODECS names what
 * was built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#ifdef CDBDUMP_HAVE_LZO
#include <lzo/lzo1x.h>
#endif
#ifdef CDBDUMP_HAVE_SNAPPY
#include <snappy-c.h>
#endif
#ifdef CDBDUMP_HAVE_ZSTD
#include <pthread.h>
#include <zstd.h>
#include <zstd_errors.h>
#endif

/* diskdump_mod.h DUMP_DH_COMPRESSED_*: the page_desc flags of a compressed page */
#define FLAG_ZLIB 0x1
#define FLAG_LZO 0x2
#define FLAG_SNAPPY 0x4
#define FLAG_ZSTD 0x20

/* the largest page of any architecture makedumpfile supports is 64 KiB */
#define MAX_PAGE_SIZE (1u << 20)

static PyObject *PagebatchError;

#ifdef CDBDUMP_HAVE_ZSTD
/* Each thread's ZSTD_CCtx (created on its first zstd batch, freed by the key's
 * destructor when the thread exits): a context keeps its tables and work space, so
 * a batch does not allocate them again. ZSTD_compressCCtx sets every parameter
 * from its level argument, so the bytes do not depend on what the context did
 * before. */
static pthread_key_t zstd_cctx_key;

static void
zstd_cctx_free(void *cctx)
{
    ZSTD_freeCCtx((ZSTD_CCtx *)cctx);
}

static pthread_key_t zstd_dctx_key; /* the decoder's: the same, with a ZSTD_DCtx */
static void zstd_dctx_free(void *dctx); /* in the decoder's section */

static ZSTD_CCtx *
zstd_thread_cctx(void)
{
    ZSTD_CCtx *cctx = (ZSTD_CCtx *)pthread_getspecific(zstd_cctx_key);
    if (cctx == NULL) {
        cctx = ZSTD_createCCtx();
        if (cctx != NULL && pthread_setspecific(zstd_cctx_key, cctx) != 0) {
            ZSTD_freeCCtx(cctx);
            cctx = NULL;
        }
    }
    return cctx;
}
#endif

/* -- one coder per call (per thread): the codec's own state -------------------------- */

typedef struct {
    unsigned flag;
    size_t page_size;
    size_t bound; /* the most bytes one page can compress to */
    void *wrkmem; /* lzo1x_1 dictionary */
    z_stream zs;
    int zs_ready;
#ifdef CDBDUMP_HAVE_ZSTD
    ZSTD_CCtx *cctx; /* the thread's own (zstd_thread_cctx), not freed by coder_free */
#endif
    /* the stored form of an all-zero page, once one was compressed: every codec here
     * is a pure function of its input, so the next zero page gets these bytes back */
    unsigned char *zero_form;
    size_t zero_len;
    unsigned zero_flag;
} coder_t;

enum { CODER_OK = 0, CODER_NOMEM = 1, CODER_FAILED = 2 };

static size_t
codec_bound(unsigned flag, size_t page_size)
{
    switch (flag) {
    case FLAG_ZLIB:
        return (size_t)compressBound((uLong)page_size);
#ifdef CDBDUMP_HAVE_LZO
    case FLAG_LZO:
        /* lzo1x_1 writes without bounds: its documented worst case */
        return page_size + page_size / 16 + 64 + 3;
#endif
#ifdef CDBDUMP_HAVE_SNAPPY
    case FLAG_SNAPPY:
        return snappy_max_compressed_length(page_size);
#endif
#ifdef CDBDUMP_HAVE_ZSTD
    case FLAG_ZSTD:
        return ZSTD_compressBound(page_size);
#endif
    default:
        return 0;
    }
}

static int
coder_init(coder_t *c, unsigned flag, size_t page_size)
{
    memset(c, 0, sizeof(*c));
    c->flag = flag;
    c->page_size = page_size;
    c->bound = codec_bound(flag, page_size);
    if (flag == FLAG_ZLIB) {
        /* what compress2() does: deflateInit(level) = window 15, memLevel 8 */
        if (deflateInit2(&c->zs, Z_BEST_SPEED, Z_DEFLATED, MAX_WBITS, 8,
                         Z_DEFAULT_STRATEGY) != Z_OK)
            return CODER_NOMEM;
        c->zs_ready = 1;
    }
#ifdef CDBDUMP_HAVE_LZO
    if (flag == FLAG_LZO) {
        c->wrkmem = malloc(LZO1X_1_MEM_COMPRESS);
        if (c->wrkmem == NULL)
            return CODER_NOMEM;
    }
#endif
#ifdef CDBDUMP_HAVE_ZSTD
    if (flag == FLAG_ZSTD) {
        c->cctx = zstd_thread_cctx();
        if (c->cctx == NULL)
            return CODER_NOMEM;
    }
#endif
    return CODER_OK;
}

static void
coder_free(coder_t *c)
{
    if (c->zs_ready)
        deflateEnd(&c->zs);
    free(c->wrkmem);
    free(c->zero_form);
    c->zs_ready = 0;
    c->wrkmem = NULL;
    c->zero_form = NULL;
}

/* Compress one page into out (room for c->bound bytes); *out_len gets its length.
 * Returns CODER_FAILED when the library reports an error. */
static int
coder_page(coder_t *c, const unsigned char *page, unsigned char *out, size_t *out_len)
{
    switch (c->flag) {
    case FLAG_ZLIB: {
        if (deflateReset(&c->zs) != Z_OK)
            return CODER_FAILED;
        c->zs.next_in = (Bytef *)page;
        c->zs.avail_in = (uInt)c->page_size;
        c->zs.next_out = out;
        c->zs.avail_out = (uInt)c->bound;
        if (deflate(&c->zs, Z_FINISH) != Z_STREAM_END)
            return CODER_FAILED;
        *out_len = c->bound - c->zs.avail_out;
        return CODER_OK;
    }
#ifdef CDBDUMP_HAVE_LZO
    case FLAG_LZO: {
        lzo_uint len = 0;
        if (lzo1x_1_compress(page, c->page_size, out, &len, c->wrkmem) != LZO_E_OK)
            return CODER_FAILED;
        *out_len = len;
        return CODER_OK;
    }
#endif
#ifdef CDBDUMP_HAVE_SNAPPY
    case FLAG_SNAPPY: {
        size_t len = c->bound;
        if (snappy_compress((const char *)page, c->page_size, (char *)out, &len) != SNAPPY_OK)
            return CODER_FAILED;
        *out_len = len;
        return CODER_OK;
    }
#endif
#ifdef CDBDUMP_HAVE_ZSTD
    case FLAG_ZSTD: {
        size_t len = ZSTD_compressCCtx(c->cctx, out, c->bound, page, c->page_size, 1);
        if (ZSTD_isError(len))
            return ZSTD_getErrorCode(len) == ZSTD_error_memory_allocation ? CODER_NOMEM
                                                                          : CODER_FAILED;
        *out_len = len;
        return CODER_OK;
    }
#endif
    default:
        return CODER_FAILED;
    }
}

static int
page_is_zero(const unsigned char *page, size_t page_size)
{
    return page[0] == 0 && memcmp(page, page + 1, page_size - 1) == 0;
}

/* The stored form of one page by makedumpfile's rule: the compressed form when it
 * is strictly smaller than the page, else the raw page (flag 0). out has room for
 * c->bound bytes. */
static int
coder_store(coder_t *c, const unsigned char *page, unsigned char *out, size_t *out_len,
            unsigned *out_flag)
{
    int zero = page_is_zero(page, c->page_size);
    if (zero && c->zero_form != NULL) {
        memcpy(out, c->zero_form, c->zero_len);
        *out_len = c->zero_len;
        *out_flag = c->zero_flag;
        return CODER_OK;
    }
    size_t len = 0;
    int status = coder_page(c, page, out, &len);
    if (status != CODER_OK)
        return status;
    if (len < c->page_size) {
        *out_flag = c->flag;
    } else { /* not smaller: stored raw */
        memcpy(out, page, c->page_size);
        len = c->page_size;
        *out_flag = 0;
    }
    *out_len = len;
    if (zero) {
        c->zero_form = malloc(len);
        if (c->zero_form == NULL)
            return CODER_NOMEM;
        memcpy(c->zero_form, out, len);
        c->zero_len = len;
        c->zero_flag = *out_flag;
    }
    return CODER_OK;
}

static int
codec_built(unsigned flag)
{
    return codec_bound(flag, 4096) != 0;
}

/* -- buffers ---------------------------------------------------------------------------- */

/* A C-contiguous buffer of integers of itemsize bytes (struct format codes), aligned
 * for them. */
static int
get_array(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize, const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    const char *format = view->format != NULL ? view->format : "B";
    char code = format[0] != '\0' ? format[strlen(format) - 1] : 'B';
    if (view->itemsize != itemsize || view->len % itemsize || strchr("bBhHiIlLqQ", code) == NULL
        || ((uintptr_t)view->buf) % (uintptr_t)itemsize) {
        PyErr_Format(PyExc_ValueError, "%s must be an aligned array of %zd-byte integers", what,
                     itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* compress_pages and compress_into: the stored pages into a new bytes object (into_obj
 * NULL), or into the writable buffer into_obj (returns the byte count). With skip_zero
 * an all-zero page is not stored: size 0, flags 0 (makedumpfile is_zero_page). */
static PyObject *
compress_batch(unsigned int flag, PyObject *data_obj, PyObject *index_obj,
               Py_ssize_t page_size_arg, PyObject *sizes_obj, PyObject *flags_obj,
               PyObject *into_obj, int skip_zero);

/* -- compress_pages --------------------------------------------------------------------- */

PyDoc_STRVAR(compress_pages_doc,
"compress_pages(flag, data, index, page_size, sizes, flags) -> bytes\n\n"
"Compress the pages data[index[i]*page_size : +page_size] in order with the codec\n"
"whose page_desc flag is `flag` (0x1 zlib, 0x2 lzo, 0x4 snappy, 0x20 zstd).\n"
"`index` is an int64 array (None: every page of data). For page i, sizes[i] and\n"
"flags[i] (uint32 arrays of len(index)) get the stored size and flags: the\n"
"compressed form when it is strictly smaller than the page, else the raw page and\n"
"flags 0. Returns the stored pages, concatenated. The GIL is released while\n"
"compressing.");

static PyObject *
compress_pages(PyObject *self, PyObject *args)
{
    unsigned int flag;
    PyObject *data_obj, *index_obj, *sizes_obj, *flags_obj;
    Py_ssize_t page_size_arg;
    if (!PyArg_ParseTuple(args, "IOOnOO:compress_pages", &flag, &data_obj, &index_obj,
                          &page_size_arg, &sizes_obj, &flags_obj))
        return NULL;
    return compress_batch(flag, data_obj, index_obj, page_size_arg, sizes_obj, flags_obj, NULL,
                          0);
}

/* compress_pages and compress_into: the stored pages into a new bytes object (into_obj
 * NULL), or into the writable buffer into_obj (returns the byte count). With skip_zero
 * an all-zero page is not stored: size 0, flags 0 (makedumpfile is_zero_page). */
static PyObject *
compress_batch(unsigned int flag, PyObject *data_obj, PyObject *index_obj,
               Py_ssize_t page_size_arg, PyObject *sizes_obj, PyObject *flags_obj,
               PyObject *into_obj, int skip_zero)
{
    if (!codec_built(flag)) {
        PyErr_Format(PyExc_ValueError, "codec flag %#x is not built into cdbdump._pagebatch",
                     flag);
        return NULL;
    }
    if (page_size_arg <= 0 || (size_t)page_size_arg > MAX_PAGE_SIZE) {
        PyErr_Format(PyExc_ValueError, "page size %zd out of range", page_size_arg);
        return NULL;
    }
    size_t page_size = (size_t)page_size_arg;

    Py_buffer data, index, sizes, flags, into;
    int have_index = 0, have_sizes = 0, have_flags = 0, have_into = 0;
    PyObject *out = NULL;
    if (PyObject_GetBuffer(data_obj, &data, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (index_obj != Py_None) {
        if (get_array(index_obj, &index, 0, 8, "index") < 0)
            goto done;
        have_index = 1;
    }
    if (get_array(sizes_obj, &sizes, 1, 4, "sizes") < 0)
        goto done;
    have_sizes = 1;
    if (get_array(flags_obj, &flags, 1, 4, "flags") < 0)
        goto done;
    have_flags = 1;

    size_t nr_data_pages = (size_t)data.len / page_size;
    if ((size_t)data.len % page_size) {
        PyErr_Format(PyExc_ValueError, "data of %zd bytes is not a whole number of pages",
                     data.len);
        goto done;
    }
    size_t n = have_index ? (size_t)index.len / 8 : nr_data_pages;
    if ((size_t)sizes.len / 4 != n || (size_t)flags.len / 4 != n) {
        PyErr_Format(PyExc_ValueError, "sizes and flags must have %zu items", n);
        goto done;
    }
    const int64_t *idx = have_index ? (const int64_t *)index.buf : NULL;
    if (idx != NULL) {
        for (size_t i = 0; i < n; i++) {
            if (idx[i] < 0 || (uint64_t)idx[i] >= nr_data_pages) {
                PyErr_Format(PyExc_IndexError, "page index %lld out of range (%zu pages)",
                             (long long)idx[i], nr_data_pages);
                goto done;
            }
        }
    }

    /* Every stored page is at most page_size bytes, so page i starts at most at
     * i * page_size: bound - page_size bytes of slack let each page be compressed
     * in place, however incompressible. */
    coder_t coder;
    size_t bound = codec_bound(flag, page_size);
    size_t slack = bound > page_size ? bound - page_size : 0;
    if (n > (size_t)(PY_SSIZE_T_MAX - (Py_ssize_t)slack) / page_size) {
        PyErr_SetString(PyExc_OverflowError, "batch too large");
        goto done;
    }
    size_t capacity = n * page_size + slack;
    unsigned char *dst;
    if (into_obj != NULL) {
        if (PyObject_GetBuffer(into_obj, &into, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)
            goto done;
        have_into = 1;
        if ((size_t)into.len < capacity) {
            PyErr_Format(PyExc_ValueError, "out has %zd bytes, the batch may need %zu",
                         into.len, capacity);
            goto done;
        }
        dst = (unsigned char *)into.buf;
    } else {
        out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)capacity);
        if (out == NULL)
            goto done;
        dst = (unsigned char *)PyBytes_AS_STRING(out);
    }
    const unsigned char *src = (const unsigned char *)data.buf;
    uint32_t *size_out = (uint32_t *)sizes.buf;
    uint32_t *flag_out = (uint32_t *)flags.buf;
    size_t cursor = 0;
    int status;

    Py_BEGIN_ALLOW_THREADS
    status = coder_init(&coder, flag, page_size);
    for (size_t i = 0; status == CODER_OK && i < n; i++) {
        const unsigned char *page = src + (idx != NULL ? (size_t)idx[i] : i) * page_size;
        size_t len = 0;
        unsigned stored_flag = 0;
        if (skip_zero && page_is_zero(page, page_size)) {
            size_out[i] = 0;
            flag_out[i] = 0;
            continue;
        }
        status = coder_store(&coder, page, dst + cursor, &len, &stored_flag);
        if (status != CODER_OK)
            break;
        size_out[i] = (uint32_t)len;
        flag_out[i] = stored_flag;
        cursor += len;
    }
    coder_free(&coder);
    Py_END_ALLOW_THREADS

    if (status == CODER_NOMEM) {
        PyErr_NoMemory();
        Py_CLEAR(out);
    } else if (status != CODER_OK) {
        PyErr_Format(PagebatchError, "codec %#x failed to compress a page", flag);
        Py_CLEAR(out);
    } else if (have_into) {
        out = PyLong_FromSize_t(cursor);
    } else if (_PyBytes_Resize(&out, (Py_ssize_t)cursor) < 0) {
        out = NULL; /* _PyBytes_Resize freed it */
    }

done:
    if (have_into)
        PyBuffer_Release(&into);
    if (have_flags)
        PyBuffer_Release(&flags);
    if (have_sizes)
        PyBuffer_Release(&sizes);
    if (have_index)
        PyBuffer_Release(&index);
    PyBuffer_Release(&data);
    return out;
}

PyDoc_STRVAR(compress_into_doc,
"compress_into(flag, data, index, page_size, sizes, flags, out, skip_zero=False) -> int\n\n"
"compress_pages() into the writable buffer `out` instead of a new bytes object:\n"
"the stored pages, concatenated, from its start. `out` must hold\n"
"len(index) * page_size + compress_slack(flag, page_size) bytes (the most a batch\n"
"can need, compressed in place). Returns the number of bytes stored. With\n"
"skip_zero an all-zero page is not stored: its size and flags are 0.");

static PyObject *
compress_into(PyObject *self, PyObject *args)
{
    unsigned int flag;
    PyObject *data_obj, *index_obj, *sizes_obj, *flags_obj, *into_obj;
    Py_ssize_t page_size_arg;
    int skip_zero = 0;
    if (!PyArg_ParseTuple(args, "IOOnOOO|p:compress_into", &flag, &data_obj, &index_obj,
                          &page_size_arg, &sizes_obj, &flags_obj, &into_obj, &skip_zero))
        return NULL;
    return compress_batch(flag, data_obj, index_obj, page_size_arg, sizes_obj, flags_obj,
                          into_obj, skip_zero);
}

PyDoc_STRVAR(compress_slack_doc,
"compress_slack(flag, page_size) -> int\n\n"
"Bytes compress_into() needs in `out` beyond page_size per page.");

static PyObject *
compress_slack(PyObject *self, PyObject *args)
{
    unsigned int flag;
    Py_ssize_t page_size_arg;
    if (!PyArg_ParseTuple(args, "In:compress_slack", &flag, &page_size_arg))
        return NULL;
    if (!codec_built(flag) || page_size_arg <= 0 || (size_t)page_size_arg > MAX_PAGE_SIZE) {
        PyErr_Format(PyExc_ValueError, "no codec flag %#x with page size %zd", flag,
                     page_size_arg);
        return NULL;
    }
    size_t bound = codec_bound(flag, (size_t)page_size_arg);
    return PyLong_FromSize_t(bound > (size_t)page_size_arg ? bound - (size_t)page_size_arg : 0);
}

/* -- module ----------------------------------------------------------------------------- */

/* the batch decompressor: its own section at the end of this file */
static PyObject *decompress_pages(PyObject *self, PyObject *args);
PyDoc_STRVAR(decompress_pages_doc,
"decompress_pages(data, offsets, sizes, flags, page_size, out) -> int\n\n"
"Decode stored pages into out (len(offsets) * page_size bytes, writable): page i is\n"
"data[offsets[i] : offsets[i] + sizes[i]] with page_desc flags flags[i] (0 raw, 0x1\n"
"zlib, 0x2 lzo, 0x4 snappy, 0x20 zstd). offsets is an int64 array, sizes and flags\n"
"uint32 ones. Returns -1 when every page decoded to exactly page_size bytes, else the\n"
"index of the first page that did not (the caller names the problem). The GIL is\n"
"released.");

static PyMethodDef methods[] = {
    {"compress_into", compress_into, METH_VARARGS, compress_into_doc},
    {"compress_slack", compress_slack, METH_VARARGS, compress_slack_doc},
    {"compress_pages", compress_pages, METH_VARARGS, compress_pages_doc},
    {"decompress_pages", decompress_pages, METH_VARARGS, decompress_pages_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "cdbdump._pagebatch",
    .m_doc = "Batch page compression and decompression for kdump-compressed dumps "
              "(C, GIL released).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__pagebatch(void)
{
#ifdef CDBDUMP_HAVE_LZO
    if (lzo_init() != LZO_E_OK) {
        PyErr_SetString(PyExc_ImportError, "lzo_init() failed");
        return NULL;
    }
#endif
#ifdef CDBDUMP_HAVE_ZSTD
    /* m_size -1: initialised once per process, the key is never deleted */
    static int zstd_key_made = 0;
    if (!zstd_key_made) {
        if (pthread_key_create(&zstd_cctx_key, zstd_cctx_free) != 0) {
            PyErr_SetString(PyExc_ImportError, "pthread_key_create() failed");
            return NULL;
        }
        if (pthread_key_create(&zstd_dctx_key, zstd_dctx_free) != 0) {
            PyErr_SetString(PyExc_ImportError, "pthread_key_create() failed");
            return NULL;
        }
        zstd_key_made = 1;
    }
#endif
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    PagebatchError = PyErr_NewException("cdbdump._pagebatch.error", NULL, NULL);
    if (PagebatchError == NULL || PyModule_AddObjectRef(m, "error", PagebatchError) < 0)
        goto fail;
    PyObject *codecs = Py_BuildValue("(s" 
#ifdef CDBDUMP_HAVE_LZO
                                     "s"
#endif
#ifdef CDBDUMP_HAVE_SNAPPY
                                     "s"
#endif
#ifdef CDBDUMP_HAVE_ZSTD
                                     "s"
#endif
                                     ")", "zlib"
#ifdef CDBDUMP_HAVE_LZO
                                     , "lzo"
#endif
#ifdef CDBDUMP_HAVE_SNAPPY
                                     , "snappy"
#endif
#ifdef CDBDUMP_HAVE_ZSTD
                                     , "zstd"
#endif
                                     );
    if (codecs == NULL || PyModule_AddObject(m, "CODECS", codecs) < 0) {
        Py_XDECREF(codecs);
        goto fail;
    }
    if (PyModule_AddIntConstant(m, "MAX_PAGE_SIZE", MAX_PAGE_SIZE) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}

/* == decompress_pages: the reader's batch decoder ===========================================
 *
 * reference: makedumpfile readpage_kdump_compressed: a stored page is raw when its
 * page_desc flags are 0 (size must be the page size), else decoded by the codec the
 * flags name, and the result must be exactly one page long:
 *   zlib:   uncompress()                 (here: one inflate stream, inflateReset
 *                                         between pages; the stream must end)
 *   lzo:    lzo1x_decompress_safe()
 *   snappy: snappy_uncompressed_length() then snappy_uncompress()
 *   zstd:   ZSTD_decompress()            (here: ZSTD_decompressDCtx with the thread's
 *                                         own ZSTD_DCtx, kept like the compressor's)
 * This function only says which page failed first; the Python reader turns that into
 * its one-line error (the same words as its per-page path).
 */

typedef struct {
    size_t page_size;
    z_stream zs;
    int zs_ready;
} decoder_t;

#ifdef CDBDUMP_HAVE_ZSTD
static void
zstd_dctx_free(void *dctx)
{
    ZSTD_freeDCtx((ZSTD_DCtx *)dctx);
}

static ZSTD_DCtx *
zstd_thread_dctx(void)
{
    ZSTD_DCtx *dctx = (ZSTD_DCtx *)pthread_getspecific(zstd_dctx_key);
    if (dctx == NULL) {
        dctx = ZSTD_createDCtx();
        if (dctx != NULL && pthread_setspecific(zstd_dctx_key, dctx) != 0) {
            ZSTD_freeDCtx(dctx);
            dctx = NULL;
        }
    }
    return dctx;
}
#endif

static void
decoder_free(decoder_t *d)
{
    if (d->zs_ready)
        inflateEnd(&d->zs);
    d->zs_ready = 0;
}

/* 0: page decoded to exactly page_size bytes; -1: it did not; -2: out of memory */
static int
decoder_page(decoder_t *d, unsigned flag, const unsigned char *src, size_t len,
             unsigned char *dst)
{
    size_t ps = d->page_size;
    switch (flag) {
    case 0:
        if (len != ps)
            return -1;
        memcpy(dst, src, ps);
        return 0;
    case FLAG_ZLIB: {
        if (!d->zs_ready) {
            memset(&d->zs, 0, sizeof(d->zs));
            if (inflateInit(&d->zs) != Z_OK)
                return -2;
            d->zs_ready = 1;
        } else if (inflateReset(&d->zs) != Z_OK) {
            return -1;
        }
        d->zs.next_in = (Bytef *)src;
        d->zs.avail_in = (uInt)len;
        d->zs.next_out = dst;
        d->zs.avail_out = (uInt)ps;
        int status = inflate(&d->zs, Z_FINISH);
        return status == Z_STREAM_END && d->zs.total_out == ps ? 0 : -1;
    }
#ifdef CDBDUMP_HAVE_LZO
    case FLAG_LZO: {
        lzo_uint out_len = ps;
        int status = lzo1x_decompress_safe(src, len, dst, &out_len, NULL);
        return status == LZO_E_OK && out_len == ps ? 0 : -1;
    }
#endif
#ifdef CDBDUMP_HAVE_SNAPPY
    case FLAG_SNAPPY: {
        size_t out_len = 0;
        if (snappy_uncompressed_length((const char *)src, len, &out_len) != SNAPPY_OK
            || out_len != ps)
            return -1;
        out_len = ps;
        if (snappy_uncompress((const char *)src, len, (char *)dst, &out_len) != SNAPPY_OK)
            return -1;
        return out_len == ps ? 0 : -1;
    }
#endif
#ifdef CDBDUMP_HAVE_ZSTD
    case FLAG_ZSTD: {
        ZSTD_DCtx *dctx = zstd_thread_dctx();
        if (dctx == NULL)
            return -2;
        /* the first frame only: bytes after it are ignored, as by the per-page path
         * (python-zstandard's decompress); makedumpfile's ZSTD_decompress would read
         * them as more frames. A frame larger than the page fails (dstSize_tooSmall). */
        size_t frame_len = ZSTD_findFrameCompressedSize(src, len);
        if (ZSTD_isError(frame_len))
            return -1;
        size_t out_len = ZSTD_decompressDCtx(dctx, dst, ps, src, frame_len);
        if (ZSTD_isError(out_len))
            return ZSTD_getErrorCode(out_len) == ZSTD_error_memory_allocation ? -2 : -1;
        return out_len == ps ? 0 : -1;
    }
#endif
    default:
        return -1;
    }
}

static PyObject *
decompress_pages(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *data_obj, *offsets_obj, *sizes_obj, *flags_obj, *out_obj;
    Py_ssize_t page_size_arg;
    if (!PyArg_ParseTuple(args, "OOOOnO:decompress_pages", &data_obj, &offsets_obj,
                          &sizes_obj, &flags_obj, &page_size_arg, &out_obj))
        return NULL;
    if (page_size_arg <= 0 || (size_t)page_size_arg > MAX_PAGE_SIZE) {
        PyErr_Format(PyExc_ValueError, "page size %zd out of range", page_size_arg);
        return NULL;
    }
    size_t page_size = (size_t)page_size_arg;
    Py_buffer data, offsets, sizes, flags, out;
    int have_offsets = 0, have_sizes = 0, have_flags = 0, have_out = 0;
    PyObject *result = NULL;
    if (PyObject_GetBuffer(data_obj, &data, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (get_array(offsets_obj, &offsets, 0, 8, "offsets") < 0)
        goto done;
    have_offsets = 1;
    if (get_array(sizes_obj, &sizes, 0, 4, "sizes") < 0)
        goto done;
    have_sizes = 1;
    if (get_array(flags_obj, &flags, 0, 4, "flags") < 0)
        goto done;
    have_flags = 1;
    if (PyObject_GetBuffer(out_obj, &out, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)
        goto done;
    have_out = 1;
    size_t n = (size_t)offsets.len / 8;
    if ((size_t)sizes.len / 4 != n || (size_t)flags.len / 4 != n) {
        PyErr_Format(PyExc_ValueError, "sizes and flags must have %zu items", n);
        goto done;
    }
    if ((size_t)out.len / page_size < n) {
        PyErr_Format(PyExc_ValueError, "out holds fewer than %zu pages", n);
        goto done;
    }
    const unsigned char *src = (const unsigned char *)data.buf;
    size_t src_len = (size_t)data.len;
    const int64_t *off = (const int64_t *)offsets.buf;
    const uint32_t *len = (const uint32_t *)sizes.buf;
    const uint32_t *flag = (const uint32_t *)flags.buf;
    unsigned char *dst = (unsigned char *)out.buf;
    Py_ssize_t failed = -1;
    int nomem = 0;

    Py_BEGIN_ALLOW_THREADS
    decoder_t decoder;
    memset(&decoder, 0, sizeof(decoder));
    decoder.page_size = page_size;
    for (size_t i = 0; i < n; i++) {
        /* a stored page lies inside data, and no page is stored larger than a page */
        if (off[i] < 0 || (uint64_t)off[i] > src_len || len[i] > src_len - (size_t)off[i]
            || len[i] == 0 || len[i] > page_size) {
            failed = (Py_ssize_t)i;
            break;
        }
        int status = decoder_page(&decoder, flag[i], src + off[i], len[i],
                                  dst + i * page_size);
        if (status != 0) {
            nomem = status == -2;
            failed = (Py_ssize_t)i;
            break;
        }
    }
    decoder_free(&decoder);
    Py_END_ALLOW_THREADS

    if (nomem)
        PyErr_NoMemory();
    else
        result = PyLong_FromSsize_t(failed);

done:
    if (have_out)
        PyBuffer_Release(&out);
    if (have_flags)
        PyBuffer_Release(&flags);
    if (have_sizes)
        PyBuffer_Release(&sizes);
    if (have_offsets)
        PyBuffer_Release(&offsets);
    PyBuffer_Release(&data);
    return result;
}
