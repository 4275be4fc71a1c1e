/* pair_bench SOCKET CHANNEL SIZE COUNT [serial]: one producer thread sends COUNT messages of
 * SIZE bytes (shmem_send) to one consumer thread (shmem_recv into a buffer) through CHANNEL,
 * which must exist; prints "SECONDS" from the first send to end-of-stream. The C side of the
 * "C against the Rust client" rows of BENCHMARKS.md; client/examples/pair_bench.rs is the Rust
 * side, line for line. With "serial", one thread sends a burst (at most 1000 messages, at most
 * 4 MiB) and then receives it, over and over: no thread ever waits, so an instruction count
 * (callgrind) is the calls' own. Built by bench.py: cc pair_bench.c $(pkg-config --cflags
 * --libs shmem-broker). */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <shmem_broker.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Bytes of one serial burst (frames included): half the 8 MiB channel bench.py creates. */
#define BURST_BYTES (4UL << 20)

struct job {
    shmem_producer *producer;
    size_t size;
    unsigned long count;
    int rc;
};

static void *produce(void *arg) {
    struct job *job = arg;
    /* `job` lies on the consumer thread's stack, next to what that thread writes for every
       message: the loop works on copies (a load or store of that cache line per message would
       bounce it between the two cores), and the result is stored once at the end, as the Rust
       twin's thread owns its values and returns its result. */
    shmem_producer *producer = job->producer;
    size_t size = job->size;
    unsigned long count = job->count;
    char *buf = calloc(1, size ? size : 1);
    int rc = buf ? SHMEM_OK : SHMEM_ERR_OTHER;
    for (unsigned long i = 0; i < count && rc == SHMEM_OK; i++)
        rc = shmem_send(producer, buf, size);
    free(buf);
    int closed = shmem_producer_close(producer);
    job->rc = rc == SHMEM_OK ? closed : rc;
    return NULL;
}

int main(int argc, char **argv) {
    int serial = argc == 6 && strcmp(argv[5], "serial") == 0;
    if (argc != 5 && !serial) {
        fprintf(stderr, "usage: pair_bench SOCKET CHANNEL SIZE COUNT [serial]\n");
        return 2;
    }
    size_t size = strtoull(argv[3], NULL, 10);
    unsigned long count = strtoul(argv[4], NULL, 10);
    shmem_client *client = NULL;
    shmem_consumer *consumer = NULL;
    struct job job = {NULL, size, count, SHMEM_OK};
    if (shmem_client_connect(argv[1], &client) != SHMEM_OK ||
        shmem_consumer_attach(client, argv[2], NULL, &consumer) != SHMEM_OK ||
        shmem_producer_attach(client, argv[2], NULL, &job.producer) != SHMEM_OK) {
        fprintf(stderr, "pair_bench: %s\n", shmem_last_error_message());
        return 1;
    }
    char *buf = malloc(size ? size : 1);
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    if (serial) {
        char *message = calloc(1, size ? size : 1);
        unsigned long burst = BURST_BYTES / (size + 64);
        burst = burst < 1 ? 1 : burst > 1000 ? 1000 : burst;
        unsigned long received = 0;
        size_t len = 0;
        if (buf == NULL || message == NULL)
            return 1;
        while (received < count) {
            unsigned long n = burst < count - received ? burst : count - received;
            for (unsigned long i = 0; i < n; i++)
                if (shmem_send(job.producer, message, size) != SHMEM_OK) {
                    fprintf(stderr, "pair_bench: send: %s\n", shmem_last_error_message());
                    return 1;
                }
            for (unsigned long i = 0; i < n; i++)
                if (shmem_recv(consumer, buf, size ? size : 1, &len) != SHMEM_OK) {
                    fprintf(stderr, "pair_bench: recv: %s\n", shmem_last_error_message());
                    return 1;
                }
            received += n;
        }
        if (shmem_producer_close(job.producer) != SHMEM_OK ||
            shmem_recv(consumer, buf, size ? size : 1, &len) != SHMEM_END_OF_STREAM) {
            fprintf(stderr, "pair_bench: end: %s\n", shmem_last_error_message());
            return 1;
        }
        clock_gettime(CLOCK_MONOTONIC, &end);
        printf("%.6f\n", (double)(end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9);
        free(message);
        free(buf);
        shmem_consumer_free(consumer);
        shmem_client_free(client);
        return 0;
    }
    pthread_t thread;
    if (buf == NULL || pthread_create(&thread, NULL, produce, &job) != 0)
        return 1;
    unsigned long received = 0;
    for (;;) {
        size_t len = 0;
        int rc = shmem_recv(consumer, buf, size ? size : 1, &len);
        if (rc == SHMEM_END_OF_STREAM)
            break;
        if (rc != SHMEM_OK) {
            fprintf(stderr, "pair_bench: recv: %s\n", shmem_last_error_message());
            return 1;
        }
        received++;
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    pthread_join(thread, NULL);
    if (job.rc != SHMEM_OK || received != count) {
        fprintf(stderr, "pair_bench: send %d, received %lu of %lu\n", job.rc, received, count);
        return 1;
    }
    printf("%.6f\n", (double)(end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9);
    free(buf);
    shmem_consumer_free(consumer);
    shmem_client_free(client);
    return 0;
}
