// Keep the process's large memory blocks mapped between uses (preloaded by the `cnn` command).
//
// XLA:CPU allocates a training step's temporary buffers as one block (196 MB for ResNet-20 at
// batch 128), and glibc maps a block that large fresh from the kernel and unmaps it on free, so
// every step faults in and zeroes all of it again: ~10% of the step, most of it inside the first
// convolution that writes each buffer. Blocks of LARGE bytes or more are served here instead,
// from one reserved address range: a freed block stays mapped and the next large request of a
// size it can hold reuses it (best fit), like the caching allocators of other frameworks. The
// memory kept never exceeds the most that was live at once, so the resident size stays at the
// step's peak between steps instead of dropping; everything smaller, and any block when the
// range cannot be reserved or its table is full, is glibc's.
//
// free() tells the blocks apart by address (one range check), so glibc's never reach this code.
// The entry points are the ones glibc's manual lists for replacing malloc; valloc and pvalloc stay
// glibc's (their blocks go back to glibc through the same check).

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

#define LARGE ((size_t)32 << 20)  /* glibc's own largest mmap threshold */
#define GRAIN ((size_t)2 << 20)   /* a huge page: blocks start and end on one */
#define RESERVE ((size_t)1 << 42) /* 4 TiB of address space, never memory by itself */
#define SLOTS 256

enum { UNUSED, LIVE, KEPT, RELEASED };

static struct Block {
  char *at;
  size_t capacity, size;
  int state;
} blocks[SLOTS];

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char *base;        // the reserved range, or NULL
static size_t used;       // bytes of the range handed out so far (blocks never move)
static size_t live, kept, peak;  // bytes in LIVE and KEPT blocks; most LIVE bytes seen
static int tried;

static int reserve(void) {  // with the lock held
  if (!tried) {
    tried = 1;
    void *p = mmap(NULL, RESERVE + GRAIN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p != MAP_FAILED) base = (char *)(((uintptr_t)p + GRAIN - 1) & ~(GRAIN - 1));
  }
  return base != NULL;
}

static int ours(const void *p) {
  return base != NULL && (uintptr_t)p - (uintptr_t)base < RESERVE;
}

static void release(struct Block *b) {  // back to reserved address space: its memory returns
  mmap(b->at, b->capacity, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
  kept -= b->capacity;
  b->state = RELEASED;
}

// Keep no more than the most that was live at once: release the largest kept blocks first.
static void trim(void) {
  while (live + kept > peak && kept > 0) {
    struct Block *largest = NULL;
    for (int i = 0; i < SLOTS; i++)
      if (blocks[i].state == KEPT && (!largest || blocks[i].capacity > largest->capacity)) largest = &blocks[i];
    release(largest);
  }
}

static void *take(size_t size, int zero) {
  size_t capacity = (size + GRAIN - 1) & ~(GRAIN - 1);
  pthread_mutex_lock(&lock);
  struct Block *best = NULL, *slot = NULL;
  if (reserve()) {
    for (int i = 0; i < SLOTS; i++) {
      struct Block *b = &blocks[i];
      if ((b->state == KEPT || b->state == RELEASED) && b->capacity >= capacity &&
          (!best || b->state < best->state || (b->state == best->state && b->capacity < best->capacity)))
        best = b;  // a kept block before a released one, then the smallest that holds it
      if (b->state == UNUSED && !slot) slot = b;
    }
  }
  void *out = NULL;
  if (best) {
    if (best->state == KEPT) {
      kept -= best->capacity;
      if (zero) memset(best->at, 0, size);
    } else if (mprotect(best->at, best->capacity, PROT_READ | PROT_WRITE) == 0) {
      madvise(best->at, best->capacity, MADV_HUGEPAGE);
    } else {
      best = NULL;
    }
  } else if (slot && used + capacity <= RESERVE) {
    slot->at = base + used;
    if (mprotect(slot->at, capacity, PROT_READ | PROT_WRITE) == 0) {
      madvise(slot->at, capacity, MADV_HUGEPAGE);
      used += capacity;
      slot->capacity = capacity;
      best = slot;
    }
  }
  if (best) {
    best->state = LIVE;
    best->size = size;
    live += best->capacity;
    if (live > peak) peak = live;
    trim();
    out = best->at;
  }
  pthread_mutex_unlock(&lock);
  return out;
}

static struct Block *find(const void *p) {  // with the lock held
  for (int i = 0; i < SLOTS; i++)
    if (blocks[i].state == LIVE && blocks[i].at == p) return &blocks[i];
  return NULL;
}

static void give(void *p) {
  pthread_mutex_lock(&lock);
  struct Block *b = find(p);
  if (b) {
    b->state = KEPT;
    live -= b->capacity;
    kept += b->capacity;
  }
  pthread_mutex_unlock(&lock);
}

static size_t (*glibc_usable_size)(void *);
static void prepare(void) { pthread_mutex_lock(&lock); }
static void resume(void) { pthread_mutex_unlock(&lock); }
__attribute__((constructor)) static void setup(void) {
  glibc_usable_size = (size_t(*)(void *))dlsym(RTLD_NEXT, "malloc_usable_size");
  pthread_atfork(prepare, resume, resume);
}

void *malloc(size_t size) {
  void *p = size >= LARGE ? take(size, 0) : NULL;
  return p ? p : __libc_malloc(size);
}

void *calloc(size_t n, size_t each) {
  size_t size;
  if (__builtin_mul_overflow(n, each, &size)) {
    errno = ENOMEM;
    return NULL;
  }
  void *p = size >= LARGE ? take(size, 1) : NULL;
  return p ? p : __libc_calloc(n, each);
}

void free(void *p) {
  if (ours(p))
    give(p);
  else
    __libc_free(p);
}

void *realloc(void *p, size_t size) {
  if (!ours(p)) return __libc_realloc(p, size);
  if (size == 0) {
    give(p);
    return NULL;
  }
  pthread_mutex_lock(&lock);
  struct Block *b = find(p);
  size_t old = b ? b->size : 0, capacity = b ? b->capacity : 0;
  if (b && size <= capacity) b->size = size;
  pthread_mutex_unlock(&lock);
  if (size <= capacity) return p;
  void *q = malloc(size);
  if (!q) return NULL;
  memcpy(q, p, old);
  give(p);
  return q;
}

void *reallocarray(void *p, size_t n, size_t each) {
  size_t size;
  if (__builtin_mul_overflow(n, each, &size)) {
    errno = ENOMEM;
    return NULL;
  }
  return realloc(p, size);
}

static void *aligned(size_t alignment, size_t size) {
  void *p = size >= LARGE && alignment <= GRAIN ? take(size, 0) : NULL;
  return p ? p : __libc_memalign(alignment, size);
}

int posix_memalign(void **out, size_t alignment, size_t size) {
  if (alignment < sizeof(void *) || (alignment & (alignment - 1))) return EINVAL;
  void *p = aligned(alignment, size);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}

void *aligned_alloc(size_t alignment, size_t size) { return aligned(alignment, size); }

void *memalign(size_t alignment, size_t size) { return aligned(alignment, size); }

size_t malloc_usable_size(void *p) {
  if (!p) return 0;
  if (ours(p)) {
    pthread_mutex_lock(&lock);
    struct Block *b = find(p);
    size_t n = b ? b->capacity : 0;
    pthread_mutex_unlock(&lock);
    return n;
  }
  return glibc_usable_size ? glibc_usable_size(p) : 0;
}
