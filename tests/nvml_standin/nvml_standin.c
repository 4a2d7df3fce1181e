/* A stand-in libnvidia-ml.so.1: the NVML C ABI that nvidia-ml-py (pynvml) calls on wattwise's
 * path, answering from real GPU recordings instead of a driver. See README.md in this folder.
 *
 * Types and layouts follow NVIDIA's nvml.h (as nvidia-ml-py's ctypes structs mirror them):
 * nvmlReturn_t is an int-sized enum, nvmlDevice_t an opaque pointer, nvmlFieldValue_t
 * {uint fieldId, uint scopeId, long long timestamp, long long latencyUsec, nvmlValueType_t
 * valueType, nvmlReturn_t nvmlReturn, nvmlValue_t value} (40 bytes), nvmlMemory_t {total, free,
 * used} as unsigned long long, nvmlUtilization_t {uint gpu, uint memory}, nvmlProcessInfo_t
 * (_v2 / _v3) {uint pid, ull usedGpuMemory, uint gpuInstanceId, uint computeInstanceId}.
 *
 * Environment (read at each first nvmlInit*, i.e. when the init count goes from 0 to 1):
 *   NVML_STANDIN_TRACE        CSV trace(s) in tests/fixtures/nvml's format; a comma list gives one
 *                             per device (cycled). Unset: nvmlInit returns DRIVER_NOT_LOADED.
 *   NVML_STANDIN_DEVICES      number of GPUs (default: the number of traces)
 *   NVML_STANDIN_NAME         product name (default "NVIDIA H200")
 *   NVML_STANDIN_ARCH         kepler|maxwell|pascal|volta|turing|ampere|ada|hopper|blackwell
 *                             (default hopper)
 *   NVML_STANDIN_MIG          MIG instances per GPU (default 0: MIG off; needs ampere or newer)
 *   NVML_STANDIN_PROCS        comma list of pids reported as compute processes on every GPU
 *   NVML_STANDIN_FAULTS       comma list of TARGET[#DEVICE]:CODE[@T_S], e.g. energy:NOT_SUPPORTED,
 *                             all:GPU_IS_LOST@5.0, fields:NO_PERMISSION, init:DRIVER_NOT_LOADED,
 *                             energy:RESET@4.0 (the counter restarts from 0 at 4 s)
 *   NVML_STANDIN_READ_COST_MS CPU busy time per energy-counter read (default 4.0)
 * Built with -DSTANDIN_R470 (build.sh: STANDIN_DRIVER=r470) it is an R470 driver: version
 * 470.256.02, without the _v3 running-process calls that came with R510.
 *   NVML_STANDIN_T0           the trace's time 0 (CLOCK_MONOTONIC ns); unset, the process's first
 *                             init sets it (and exports it to the processes it starts)
 *   NVML_STANDIN_LOG          file to append "init <CLOCK_MONOTONIC ns>" and
 *                             "energy <device> <t_s since time 0> <mJ>" lines to (%p: the pid)
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_UNKNOWN = 999,
};

typedef union {
    double dVal;
    unsigned int uiVal;
    unsigned long ulVal;
    unsigned long long ullVal;
    signed long long sllVal;
    signed int siVal;
    unsigned short usVal;
} nvmlValue_t;

typedef struct {
    unsigned int fieldId;
    unsigned int scopeId;
    long long timestamp;
    long long latencyUsec;
    int valueType; /* nvmlValueType_t */
    nvmlReturn_t nvmlReturn;
    nvmlValue_t value;
} nvmlFieldValue_t;

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

_Static_assert(sizeof(nvmlFieldValue_t) == 40, "nvmlFieldValue_t is 40 bytes in nvml.h");
_Static_assert(sizeof(nvmlProcessInfo_t) == 24, "nvmlProcessInfo_t is 24 bytes in nvml.h");

enum { VT_DOUBLE, VT_UINT, VT_ULONG, VT_ULL, VT_SLL, VT_SINT, VT_USHORT };
enum { FI_TOTAL_ENERGY = 83, FI_POWER_AVERAGE = 185, FI_POWER_INSTANT = 186 };
enum { ARCH_VOLTA = 5, ARCH_AMPERE = 7, ARCH_HOPPER = 9 };

#define MAX_DEVICES 64
#define MAX_MIG 7
#define MAX_FAULTS 32
#define MAX_PROCS 16

typedef struct {
    size_t n;
    double *t;     /* seconds since the trace's first row */
    double *e_mj;  /* energy counter */
    double *p_mw;  /* nvmlDeviceGetPowerUsage (1 s average on Ampere-but-GA100 and newer) */
    double *i_mw;  /* field 186, instant power */
    double *util;  /* gpu_util_pct (0 where absent) */
    double *mutil; /* mem_util_pct */
    double *mem_mib;
} trace_t;

struct nvmlDevice_st {
    int index; /* physical GPU */
    int mig;   /* -1: the GPU itself; else the MIG instance */
};
typedef struct nvmlDevice_st *nvmlDevice_t;

typedef struct {
    char target[16];
    int device; /* -1: every device */
    nvmlReturn_t code;
    int reset; /* energy:RESET */
    double at_s;
} fault_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int init_count;
static struct timespec t_init;
static int n_devices, n_traces, n_mig, arch = ARCH_HOPPER;
static char name[96] = "NVIDIA H200";
static trace_t traces[MAX_DEVICES];
static struct nvmlDevice_st handles[MAX_DEVICES];
static struct nvmlDevice_st mig_handles[MAX_DEVICES][MAX_MIG];
static fault_t faults[MAX_FAULTS];
static int n_faults;
static unsigned int procs[MAX_PROCS];
static int n_procs;
static double read_cost_s = 0.004;
static char log_path[4096];

static const struct {
    const char *name;
    int value;
} ARCHS[] = {{"kepler", 2}, {"maxwell", 3}, {"pascal", 4},    {"volta", 5},
             {"turing", 6}, {"ampere", 7},  {"ada", 8},       {"hopper", 9},
             {"blackwell", 10}};

static const struct {
    const char *name;
    nvmlReturn_t code;
    const char *text; /* nvmlErrorString's words, as the driver gives them */
} CODES[] = {
    {"SUCCESS", 0, "Success"},
    {"UNINITIALIZED", 1, "Uninitialized"},
    {"INVALID_ARGUMENT", 2, "Invalid Argument"},
    {"NOT_SUPPORTED", 3, "Not Supported"},
    {"NO_PERMISSION", 4, "Insufficient Permissions"},
    {"ALREADY_INITIALIZED", 5, "Already Initialized"},
    {"NOT_FOUND", 6, "Not Found"},
    {"INSUFFICIENT_SIZE", 7, "Insufficient Size"},
    {"INSUFFICIENT_POWER", 8, "Insufficient External Power"},
    {"DRIVER_NOT_LOADED", 9, "Driver Not Loaded"},
    {"TIMEOUT", 10, "Timeout"},
    {"IRQ_ISSUE", 11, "Interrupt Request Issue"},
    {"LIBRARY_NOT_FOUND", 12, "NVML Shared Library Not Found"},
    {"FUNCTION_NOT_FOUND", 13, "Function Not Found"},
    {"CORRUPTED_INFOROM", 14, "Corrupted infoROM"},
    {"GPU_IS_LOST", 15, "GPU is lost"},
    {"RESET_REQUIRED", 16, "GPU requires restart"},
    {"OPERATING_SYSTEM", 17, "The operating system has blocked the request."},
    {"LIB_RM_VERSION_MISMATCH", 18, "RM has detected an NVML/RM version mismatch."},
    {"IN_USE", 19, "In use by another client"},
    {"MEMORY", 20, "Insufficient Memory"},
    {"NO_DATA", 21, "No data"},
    {"INSUFFICIENT_RESOURCES", 23, "Insufficient resources"},
    {"NOT_READY", 27, "Not ready"},
    {"GPU_NOT_FOUND", 28, "GPU not found"},
    {"INVALID_STATE", 29, "Invalid state"},
    {"UNKNOWN", 999, "Unknown Error"},
};

/* -- time, logging ------------------------------------------------------------------------- */

static double since_init(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t_init.tv_sec) + (now.tv_nsec - t_init.tv_nsec) * 1e-9;
}

static void log_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_line(const char *fmt, ...) {
    if (!log_path[0]) return;
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&lock);
    FILE *f = fopen(log_path, "a");
    if (f) {
        fputs(buf, f);
        fclose(f);
    }
    pthread_mutex_unlock(&lock);
}

static void burn_cpu(double seconds) {
    /* the real counter read is CPU work in the driver (h200-nvml-read-cost.json): spend it */
    struct timespec start, now;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &start);
    volatile unsigned long spin = 0;
    do {
        for (int i = 0; i < 1000; i++) spin++;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
    } while ((now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) * 1e-9 < seconds);
}

/* -- traces -------------------------------------------------------------------------------- */

static void free_trace(trace_t *tr) {
    free(tr->t);
    free(tr->e_mj);
    free(tr->p_mw);
    free(tr->i_mw);
    free(tr->util);
    free(tr->mutil);
    free(tr->mem_mib);
    memset(tr, 0, sizeof *tr);
}

static int bad_trace(const char *path, const char *why, size_t line) {
    if (line)
        fprintf(stderr, "nvml-standin: NVML_STANDIN_TRACE %s, line %zu: %s\n", path, line, why);
    else
        fprintf(stderr, "nvml-standin: NVML_STANDIN_TRACE %s: %s\n", path, why);
    return -1;
}

static int load_trace(const char *path, trace_t *tr) {
    FILE *f = fopen(path, "r");
    if (!f) return bad_trace(path, strerror(errno), 0);
    char *line = NULL;
    size_t cap = 0, lineno = 1, size = 0;
    enum { T, E, P, I, U, MU, MEM, NCOL };
    static const char *wanted[NCOL] = {"t_s",          "energy_mJ",    "power_mW",    "instant_mW",
                                       "gpu_util_pct", "mem_util_pct", "mem_used_MiB"};
    int col[NCOL];
    for (int k = 0; k < NCOL; k++) col[k] = -1;
    if (getline(&line, &cap, f) < 0) {
        fclose(f);
        free(line);
        return bad_trace(path, "empty file; expected a header t_s,energy_mJ,power_mW,...", 0);
    }
    int ncols = 0;
    for (char *save = NULL, *tok = strtok_r(line, ",\r\n", &save); tok;
         tok = strtok_r(NULL, ",\r\n", &save), ncols++)
        for (int k = 0; k < NCOL; k++)
            if (strcmp(tok, wanted[k]) == 0) col[k] = ncols;
    if (col[T] < 0 || col[E] < 0 || (col[P] < 0 && col[I] < 0)) {
        fclose(f);
        free(line);
        return bad_trace(path,
                         "header lacks t_s, energy_mJ and power_mW or instant_mW "
                         "(the format of tests/fixtures/nvml)",
                         1);
    }
    memset(tr, 0, sizeof *tr);
    double cells[64];
    while (getline(&line, &cap, f) >= 0) {
        lineno++;
        if (line[0] == '\n' || line[0] == '\r' || line[0] == 0) continue;
        int n = 0;
        char *p = line;
        while (n < 64) {
            char *end;
            errno = 0;
            cells[n] = strtod(p, &end);
            if (end == p || errno) cells[n] = NAN;
            n++;
            p = strchr(p, ',');
            if (!p) break;
            p++;
        }
        if (tr->n == size) {
            size = size ? 2 * size : 1024;
            double **arrays[] = {&tr->t,    &tr->e_mj,  &tr->p_mw,   &tr->i_mw,
                                 &tr->util, &tr->mutil, &tr->mem_mib};
            for (size_t k = 0; k < sizeof arrays / sizeof *arrays; k++)
                *arrays[k] = realloc(*arrays[k], size * sizeof(double));
        }
        double v[NCOL];
        for (int k = 0; k < NCOL; k++) v[k] = (col[k] >= 0 && col[k] < n) ? cells[col[k]] : NAN;
        if (isnan(v[P])) v[P] = v[I];
        if (isnan(v[I])) v[I] = v[P];
        if (isnan(v[T]) || isnan(v[E]) || isnan(v[P]) || v[E] < 0 || v[P] < 0) {
            fclose(f);
            free(line);
            free_trace(tr);
            return bad_trace(path, "t_s, energy_mJ and power are not all non-negative numbers",
                             lineno);
        }
        size_t i = tr->n;
        if (i > 0 && (v[T] < tr->t[i - 1] || v[E] < tr->e_mj[i - 1])) {
            fclose(f);
            free(line);
            free_trace(tr);
            return bad_trace(path, "t_s and energy_mJ must not go back", lineno);
        }
        tr->t[i] = v[T];
        tr->e_mj[i] = v[E];
        tr->p_mw[i] = v[P];
        tr->i_mw[i] = v[I];
        tr->util[i] = isnan(v[U]) ? 0 : v[U];
        tr->mutil[i] = isnan(v[MU]) ? 0 : v[MU];
        tr->mem_mib[i] = isnan(v[MEM]) ? 0 : v[MEM];
        tr->n++;
    }
    fclose(f);
    free(line);
    if (tr->n < 2 || tr->t[tr->n - 1] <= tr->t[0]) {
        free_trace(tr);
        return bad_trace(path, "needs at least two rows spanning some time", 0);
    }
    double t0 = tr->t[0];
    for (size_t i = 0; i < tr->n; i++) tr->t[i] -= t0;
    return 0;
}

/* The row in effect `t` seconds after init (rows hold until the next one, like the driver's
 * ~100 ms updates) and how many whole passes of the trace came before: past its end the trace
 * plays again, its counter continuing from where the last pass ended. */
static size_t row_at(const trace_t *tr, double t, long *pass) {
    double span = tr->t[tr->n - 1];
    if (t < 0) t = 0;
    *pass = (long)floor(t / span);
    double r = t - *pass * span;
    size_t lo = 0, hi = tr->n - 1;
    while (lo < hi) {
        size_t mid = (lo + hi + 1) / 2;
        if (tr->t[mid] <= r)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

static double energy_at(const trace_t *tr, double t) {
    long pass;
    size_t i = row_at(tr, t, &pass);
    return tr->e_mj[i] + pass * (tr->e_mj[tr->n - 1] - tr->e_mj[0]);
}

static const trace_t *trace_of(int index) { return &traces[index % n_traces]; }

/* -- configuration ------------------------------------------------------------------------- */

static int code_of(const char *s, nvmlReturn_t *code) {
    for (size_t k = 0; k < sizeof CODES / sizeof *CODES; k++)
        if (strcasecmp(s, CODES[k].name) == 0) {
            *code = CODES[k].code;
            return 0;
        }
    return -1;
}

static const char *TARGETS[] = {"init",  "all",    "count",  "name",  "uuid",      "arch",
                                "memory", "limit", "energy", "power", "fields",    "instant",
                                "util",  "mig",    "processes", "driver"};

static int parse_faults(const char *spec) {
    n_faults = 0;
    if (!spec || !*spec) return 0;
    char *copy = strdup(spec);
    int rc = 0;
    for (char *save = NULL, *item = strtok_r(copy, ",", &save); item;
         item = strtok_r(NULL, ",", &save)) {
        while (isspace((unsigned char)*item)) item++;
        if (!*item) continue;
        fault_t fl = {.device = -1, .at_s = 0};
        char *colon = strchr(item, ':');
        if (!colon || n_faults == MAX_FAULTS) goto bad;
        *colon = 0;
        char *code = colon + 1, *at = strchr(code, '@'), *hash = strchr(item, '#');
        if (at) {
            *at = 0;
            char *end;
            fl.at_s = strtod(at + 1, &end);
            if (end == at + 1 || *end || fl.at_s < 0) goto bad;
        }
        if (hash) {
            *hash = 0;
            char *end;
            fl.device = (int)strtol(hash + 1, &end, 10);
            if (end == hash + 1 || *end || fl.device < 0) goto bad;
        }
        int known = 0;
        for (size_t k = 0; k < sizeof TARGETS / sizeof *TARGETS; k++)
            known |= strcmp(item, TARGETS[k]) == 0;
        if (!known || strlen(item) >= sizeof fl.target) goto bad;
        strcpy(fl.target, item);
        if (strcasecmp(code, "RESET") == 0 && strcmp(item, "energy") == 0)
            fl.reset = 1;
        else if (code_of(code, &fl.code) != 0 || fl.code == 0)
            goto bad;
        faults[n_faults++] = fl;
        continue;
    bad:
        fprintf(stderr,
                "nvml-standin: NVML_STANDIN_FAULTS item %s is not TARGET[#DEVICE]:CODE[@T_S] "
                "(targets: init all count name uuid arch memory limit energy power fields "
                "instant util mig processes driver; codes: NVML error names such as "
                "NOT_SUPPORTED, GPU_IS_LOST, NO_PERMISSION, or RESET for energy)\n",
                item);
        rc = -1;
        break;
    }
    free(copy);
    return rc;
}

/* The fault code of `target` on device `index` now, 0 when none. */
static nvmlReturn_t fault(const char *target, int index) {
    double t = -1;
    for (int k = 0; k < n_faults; k++) {
        const fault_t *fl = &faults[k];
        if (fl->reset || (fl->device >= 0 && fl->device != index)) continue;
        int system = index < 0; /* init, count, driver: not device calls, "all" spares them */
        if (strcmp(fl->target, target) != 0 && (system || strcmp(fl->target, "all") != 0))
            continue;
        if (fl->at_s > 0) {
            if (t < 0) t = since_init();
            if (t < fl->at_s) continue;
        }
        return fl->code;
    }
    return NVML_SUCCESS;
}

static double env_double(const char *var, double fallback) {
    const char *s = getenv(var);
    if (!s || !*s) return fallback;
    char *end;
    double v = strtod(s, &end);
    if (*end || v < 0) {
        fprintf(stderr, "nvml-standin: %s=%s is not a non-negative number; using %g\n", var, s,
                fallback);
        return fallback;
    }
    return v;
}

static nvmlReturn_t configure(void) {
    for (int k = 0; k < n_traces; k++) free_trace(&traces[k]);
    n_traces = 0;
    const char *spec = getenv("NVML_STANDIN_TRACE");
    if (!spec || !*spec) return NVML_ERROR_DRIVER_NOT_LOADED; /* no "driver" without a trace */
    char *copy = strdup(spec);
    for (char *save = NULL, *p = strtok_r(copy, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        if (n_traces == MAX_DEVICES || load_trace(p, &traces[n_traces]) != 0) {
            free(copy);
            for (int k = 0; k < n_traces; k++) free_trace(&traces[k]);
            n_traces = 0;
            return NVML_ERROR_UNKNOWN;
        }
        n_traces++;
    }
    free(copy);
    n_devices = (int)env_double("NVML_STANDIN_DEVICES", n_traces);
    if (n_devices > MAX_DEVICES) n_devices = MAX_DEVICES;
    n_mig = (int)env_double("NVML_STANDIN_MIG", 0);
    if (n_mig > MAX_MIG) n_mig = MAX_MIG;
    const char *nm = getenv("NVML_STANDIN_NAME");
    snprintf(name, sizeof name, "%s", nm && *nm ? nm : "NVIDIA H200");
    const char *ar = getenv("NVML_STANDIN_ARCH");
    arch = ARCH_HOPPER;
    if (ar && *ar) {
        arch = -1;
        for (size_t k = 0; k < sizeof ARCHS / sizeof *ARCHS; k++)
            if (strcasecmp(ar, ARCHS[k].name) == 0) arch = ARCHS[k].value;
        if (arch < 0) {
            fprintf(stderr,
                    "nvml-standin: NVML_STANDIN_ARCH=%s is not one of kepler maxwell pascal volta "
                    "turing ampere ada hopper blackwell\n",
                    ar);
            return NVML_ERROR_UNKNOWN;
        }
    }
    if (arch < ARCH_AMPERE) n_mig = 0;
    if (parse_faults(getenv("NVML_STANDIN_FAULTS")) != 0) return NVML_ERROR_UNKNOWN;
    n_procs = 0;
    const char *pr = getenv("NVML_STANDIN_PROCS");
    if (pr && *pr) {
        char *pcopy = strdup(pr);
        for (char *save = NULL, *p = strtok_r(pcopy, ",", &save); p && n_procs < MAX_PROCS;
             p = strtok_r(NULL, ",", &save))
            procs[n_procs++] = (unsigned int)strtoul(p, NULL, 10);
        free(pcopy);
    }
    read_cost_s = env_double("NVML_STANDIN_READ_COST_MS", 4.0) / 1000.0;
    const char *lp = getenv("NVML_STANDIN_LOG"), *pid = lp ? strstr(lp, "%p") : NULL;
    if (pid) /* one log per process */
        snprintf(log_path, sizeof log_path, "%.*s%d%s", (int)(pid - lp), lp, (int)getpid(),
                 pid + 2);
    else
        snprintf(log_path, sizeof log_path, "%s", lp ? lp : "");
    for (int i = 0; i < n_devices; i++) {
        handles[i] = (struct nvmlDevice_st){i, -1};
        for (int m = 0; m < MAX_MIG; m++) mig_handles[i][m] = (struct nvmlDevice_st){i, m};
    }
    return NVML_SUCCESS;
}

/* -- library ------------------------------------------------------------------------------- */

/* The trace's time 0. A driver's counter runs on whatever the process does, so this is set once
 * per process (at its first successful init), not at each 0 -> 1 init; and it is passed on to
 * child processes through NVML_STANDIN_T0 (CLOCK_MONOTONIC ns, one clock for the machine), so
 * processes started from one another (DDP ranks, `wattwise run`'s command) read one timeline. */
static int t_init_set;

static void set_time_base(void) {
    const char *t0 = getenv("NVML_STANDIN_T0");
    char *end = NULL;
    long long ns = t0 && *t0 ? strtoll(t0, &end, 10) : -1;
    if (ns >= 0 && end && !*end) {
        t_init.tv_sec = ns / 1000000000LL;
        t_init.tv_nsec = ns % 1000000000LL;
    } else {
        char buf[32];
        clock_gettime(CLOCK_MONOTONIC, &t_init);
        snprintf(buf, sizeof buf, "%lld", (long long)t_init.tv_sec * 1000000000LL + t_init.tv_nsec);
        setenv("NVML_STANDIN_T0", buf, 1);
    }
    t_init_set = 1;
}

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = NVML_SUCCESS;
    if (init_count == 0) {
        rc = configure();
        if (rc == NVML_SUCCESS && !t_init_set) set_time_base();
        if (rc == NVML_SUCCESS) {
            nvmlReturn_t f = fault("init", -1);
            if (f) rc = f;
        }
    }
    if (rc == NVML_SUCCESS) init_count++;
    pthread_mutex_unlock(&lock);
    if (rc == NVML_SUCCESS && init_count == 1)
        log_line("init %lld\n", (long long)t_init.tv_sec * 1000000000LL + t_init.tv_nsec);
    return rc;
}

EXPORT nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
EXPORT nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

EXPORT nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = init_count > 0 ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
    if (init_count > 0) init_count--;
    pthread_mutex_unlock(&lock);
    return rc;
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result) {
    for (size_t k = 0; k < sizeof CODES / sizeof *CODES; k++)
        if (CODES[k].code == result) return CODES[k].text;
    return "Unknown Error";
}

static nvmlReturn_t copy_string(char *out, unsigned int length, const char *s) {
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(s) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, s, strlen(s) + 1);
    return NVML_SUCCESS;
}

#define NEED_INIT()                                          \
    do {                                                     \
        if (init_count <= 0) return NVML_ERROR_UNINITIALIZED; \
    } while (0)

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    NEED_INIT();
    nvmlReturn_t f = fault("driver", -1);
#ifdef STANDIN_R470
    return f ? f : copy_string(version, length, "470.256.02");
#else
    return f ? f : copy_string(version, length, "580.159.04");
#endif
}

EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    NEED_INIT();
    return copy_string(version, length, "13.580.159.04");
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version) {
    NEED_INIT();
    if (!version) return NVML_ERROR_INVALID_ARGUMENT;
    *version = 13000;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) {
    return nvmlSystemGetCudaDriverVersion(version);
}

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    NEED_INIT();
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t f = fault("count", -1);
    if (f) return f;
    *count = (unsigned int)n_devices;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    NEED_INIT();
    if (!device || index >= (unsigned int)n_devices) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &handles[index];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

/* Which GPU (and MIG slot) a handle is; -1 for a pointer that is no handle of ours. */
static int check(nvmlDevice_t h) {
    if (h >= &handles[0] && h < &handles[n_devices]) return h->index;
    if (h >= &mig_handles[0][0] && h < &mig_handles[0][0] + MAX_DEVICES * MAX_MIG && h->index < n_devices &&
        h->mig >= 0 && h->mig < n_mig)
        return h->index;
    return -1;
}

#define DEVICE(h, target, physical_only)                                      \
    NEED_INIT();                                                              \
    int index = check(h);                                                     \
    if (index < 0) return NVML_ERROR_INVALID_ARGUMENT;                        \
    {                                                                         \
        nvmlReturn_t f_ = fault(target, index);                               \
        if (f_) return f_;                                                    \
    }                                                                         \
    if ((physical_only) && (h)->mig >= 0) return NVML_ERROR_NOT_SUPPORTED;

static void uuid_of(int index, int mig, char *out, size_t size) {
    /* fixed per index, shaped like the driver's (GPU-8-4-4-4-12 hex; MIG-... for instances) */
    unsigned int a = 0x5c1a7e2bu ^ (unsigned int)(index * 2654435761u);
    if (mig < 0)
        snprintf(out, size, "GPU-%08x-93f4-8d21-6a0e-4b7c2f9d%04x", a, index);
    else
        snprintf(out, size, "MIG-%08x-%04x-5d86-e3f0-7c91b2a4%04x", a ^ 0x0f0f0f0fu, mig, index);
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    DEVICE(device, "uuid", 0);
    char buf[96];
    uuid_of(index, device->mig, buf, sizeof buf);
    return copy_string(uuid, length, buf);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    NEED_INIT();
    if (!uuid || !device) return NVML_ERROR_INVALID_ARGUMENT;
    char buf[96];
    for (int i = 0; i < n_devices; i++) {
        uuid_of(i, -1, buf, sizeof buf);
        if (strcmp(buf, uuid) == 0) {
            *device = &handles[i];
            return NVML_SUCCESS;
        }
        for (int m = 0; m < n_mig; m++) {
            uuid_of(i, m, buf, sizeof buf);
            if (strcmp(buf, uuid) == 0) {
                *device = &mig_handles[i][m];
                return NVML_SUCCESS;
            }
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *out) {
    DEVICE(device, "name", 1);
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    *out = (unsigned int)index;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *out, unsigned int length) {
    DEVICE(device, "name", 0);
    char buf[160];
    if (device->mig >= 0)
        snprintf(buf, sizeof buf, "%s MIG 1g.18gb", name);
    else
        snprintf(buf, sizeof buf, "%s", name);
    return copy_string(out, length, buf);
}

EXPORT nvmlReturn_t nvmlDeviceGetArchitecture(nvmlDevice_t device, unsigned int *out) {
    DEVICE(device, "arch", 0);
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    *out = (unsigned int)arch;
    return NVML_SUCCESS;
}

static const unsigned long long MEM_TOTAL = 150754820096ULL; /* h200-probe.json */

static unsigned long long mem_used(int index) {
    const trace_t *tr = trace_of(index);
    long pass;
    return (unsigned long long)(tr->mem_mib[row_at(tr, since_init(), &pass)] * 1048576.0);
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    DEVICE(device, "memory", 0);
    if (!memory) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long total = device->mig >= 0 ? MEM_TOTAL / 7 : MEM_TOTAL;
    unsigned long long used = device->mig >= 0 ? 0 : mem_used(index);
    *memory = (nvmlMemory_t){total, total - used, used};
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    DEVICE(device, "memory", 0);
    if (!memory) return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != 0x02000028u) return 25; /* ARGUMENT_VERSION_MISMATCH */
    unsigned long long total = device->mig >= 0 ? MEM_TOTAL / 7 : MEM_TOTAL;
    unsigned long long used = device->mig >= 0 ? 0 : mem_used(index);
    memory->total = total;
    memory->reserved = 0;
    memory->used = used;
    memory->free = total - used;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit) {
    DEVICE(device, "limit", 1);
    if (!limit) return NVML_ERROR_INVALID_ARGUMENT;
    *limit = 700000; /* h200-probe.json */
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t device, unsigned int *limit) {
    return nvmlDeviceGetEnforcedPowerLimit(device, limit);
}

static double reset_at(int index) {
    for (int k = 0; k < n_faults; k++)
        if (faults[k].reset && (faults[k].device < 0 || faults[k].device == index))
            return faults[k].at_s;
    return -1;
}

static unsigned long long counter_mj(int index) {
    const trace_t *tr = trace_of(index);
    double t = since_init(), e = energy_at(tr, t), r = reset_at(index);
    if (r >= 0 && t >= r) e -= energy_at(tr, r); /* a driver reload: the counter restarts at 0 */
    log_line("energy %d %.6f %.0f\n", index, t, e);
    return (unsigned long long)llround(e);
}

EXPORT nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device,
                                                        unsigned long long *energy) {
    DEVICE(device, "energy", 1);
    if (!energy) return NVML_ERROR_INVALID_ARGUMENT;
    if (arch < ARCH_VOLTA) return NVML_ERROR_NOT_SUPPORTED; /* "Volta or newer" */
    burn_cpu(read_cost_s);
    *energy = counter_mj(index);
    return NVML_SUCCESS;
}

static int averaged_power_usage(void) {
    /* nvml.h: "On Ampere (except GA100) or newer GPUs, the API returns power averaged over
     * 1 sec interval. On GA100 and older architectures, instantaneous power is returned." */
    if (arch > ARCH_AMPERE) return 1;
    return arch == ARCH_AMPERE && !strstr(name, "A100") && !strstr(name, "A30");
}

static unsigned int power_mw(int index, int instant) {
    const trace_t *tr = trace_of(index);
    long pass;
    size_t i = row_at(tr, since_init(), &pass);
    return (unsigned int)llround(instant ? tr->i_mw[i] : tr->p_mw[i]);
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    DEVICE(device, "power", 1);
    if (!power) return NVML_ERROR_INVALID_ARGUMENT;
    *power = power_mw(index, !averaged_power_usage());
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t device, int count,
                                             nvmlFieldValue_t *values) {
    NEED_INIT();
    int index = check(device);
    if (index < 0 || count < 0 || (count > 0 && !values)) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t lost = fault("all", index); /* a lost GPU fails the whole call */
    if (lost) return lost;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    for (int k = 0; k < count; k++) {
        nvmlFieldValue_t *v = &values[k];
        v->timestamp = (long long)now.tv_sec * 1000000 + now.tv_nsec / 1000;
        v->latencyUsec = 0;
        v->nvmlReturn = fault("fields", index);
        if (v->nvmlReturn) continue;
        if (device->mig >= 0) {
            v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
            continue;
        }
        switch (v->fieldId) {
        case FI_POWER_INSTANT:
        case FI_POWER_AVERAGE:
            if (arch < ARCH_AMPERE || (v->fieldId == FI_POWER_INSTANT && fault("instant", index))) {
                v->nvmlReturn = arch < ARCH_AMPERE ? NVML_ERROR_NOT_SUPPORTED
                                                   : fault("instant", index);
                break;
            }
            v->valueType = VT_UINT;
            v->value.uiVal = power_mw(index, v->fieldId == FI_POWER_INSTANT);
            break;
        case FI_TOTAL_ENERGY:
            if (arch < ARCH_VOLTA || fault("energy", index)) {
                v->nvmlReturn = arch < ARCH_VOLTA ? NVML_ERROR_NOT_SUPPORTED
                                                  : fault("energy", index);
                break;
            }
            burn_cpu(read_cost_s);
            v->valueType = VT_ULL;
            v->value.ullVal = counter_mj(index);
            break;
        default:
            v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        }
    }
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *util) {
    DEVICE(device, "util", 1);
    if (!util) return NVML_ERROR_INVALID_ARGUMENT;
    const trace_t *tr = trace_of(index);
    long pass;
    size_t i = row_at(tr, since_init(), &pass);
    util->gpu = (unsigned int)llround(tr->util[i]);
    util->memory = (unsigned int)llround(tr->mutil[i]);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current,
                                         unsigned int *pending) {
    DEVICE(device, "mig", 1);
    if (!current || !pending) return NVML_ERROR_INVALID_ARGUMENT;
    if (arch < ARCH_AMPERE) return NVML_ERROR_NOT_SUPPORTED;
    *current = *pending = n_mig > 0;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    DEVICE(device, "mig", 1);
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    if (arch < ARCH_AMPERE) return NVML_ERROR_NOT_SUPPORTED;
    *count = n_mig > 0 ? MAX_MIG : 0; /* "zero if MIG is not supported or enabled" */
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int slot,
                                                        nvmlDevice_t *mig) {
    DEVICE(device, "mig", 1);
    if (!mig) return NVML_ERROR_INVALID_ARGUMENT;
    if (n_mig == 0) return NVML_ERROR_INVALID_ARGUMENT; /* the device is not in MIG mode */
    if (slot >= MAX_MIG) return NVML_ERROR_INVALID_ARGUMENT;
    if (slot >= (unsigned int)n_mig) return NVML_ERROR_NOT_FOUND; /* no instance in this slot */
    *mig = &mig_handles[index][slot];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *is_mig) {
    DEVICE(device, "mig", 0);
    if (!is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    *is_mig = device->mig >= 0;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t mig,
                                                                 nvmlDevice_t *device) {
    DEVICE(mig, "mig", 0);
    if (!device || mig->mig < 0) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &handles[index];
    return NVML_SUCCESS;
}

static nvmlReturn_t processes(nvmlDevice_t device, unsigned int *count, nvmlProcessInfo_t *infos) {
    DEVICE(device, "processes", 0);
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    if (*count < (unsigned int)n_procs || (!infos && n_procs > 0)) {
        *count = (unsigned int)n_procs;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (int k = 0; k < n_procs; k++)
        infos[k] = (nvmlProcessInfo_t){procs[k], 1ULL << 30, 0xFFFFFFFFu, 0xFFFFFFFFu};
    *count = (unsigned int)n_procs;
    return NVML_SUCCESS;
}

#ifndef STANDIN_R470 /* the _v3 process calls came with R510 */
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *c,
                                                            nvmlProcessInfo_t *p) {
    return processes(d, c, p);
}

#endif

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *c,
                                                            nvmlProcessInfo_t *p) {
    return processes(d, c, p);
}

static nvmlReturn_t graphics(nvmlDevice_t d, unsigned int *c) {
    NEED_INIT();
    if (check(d) < 0 || !c) return NVML_ERROR_INVALID_ARGUMENT;
    *c = 0; /* compute-only GPUs: no graphics clients */
    return NVML_SUCCESS;
}

#ifndef STANDIN_R470
EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t d, unsigned int *c,
                                                             nvmlProcessInfo_t *p) {
    (void)p;
    return graphics(d, c);
}
#endif

EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t d, unsigned int *c,
                                                             nvmlProcessInfo_t *p) {
    (void)p;
    return graphics(d, c);
}

/* Marks this library as the stand-in (tests check they are not talking to a real driver). */
EXPORT const char *nvmlStandinVersion(void) { return "wattwise-nvml-standin 1"; }

/* For the tests' fixture: how many nvmlInit calls are not yet shut down, and a fresh start (the
 * next nvmlInit reads the environment again). Not NVML functions. */
EXPORT int nvmlStandinInitCount(void) { return init_count; }

EXPORT void nvmlStandinReset(void) {
    pthread_mutex_lock(&lock);
    init_count = 0;
    t_init_set = 0; /* the next init starts the trace again */
    unsetenv("NVML_STANDIN_T0");
    pthread_mutex_unlock(&lock);
}
