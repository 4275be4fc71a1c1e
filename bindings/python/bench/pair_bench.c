/* pair_bench SOCKET CHANNEL SIZE COUNT: one producer thread sends COUNT messages of SIZE bytes
 * (shmem_send) to one consumer thread (shmem_recv into a buffer) through CHANNEL, which must
 * exist; prints "SECONDS" from the first send to end-of-stream. The C side of the "C against
 * the Rust client" rows of BENCHMARKS.md; client/examples/pair_bench.rs is the Rust side, line
 * for line. Built by bench.py: cc pair_bench.c $(pkg-config --cflags --libs shmem-broker). */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <shmem_broker.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct job {
    shmem_producer *producer;
    size_t size;
    unsigned long count;
    int rc;
};

static void *produce(void *arg) {
    struct job *job = arg;
    char *buf = calloc(1, job->size ? job->size : 1);
    job->rc = buf ? SHMEM_OK : SHMEM_ERR_OTHER;
    for (unsigned long i = 0; i < job->count && job->rc == SHMEM_OK; i++)
        job->rc = shmem_send(job->producer, buf, job->size);
    free(buf);
    int closed = shmem_producer_close(job->producer);
    if (job->rc == SHMEM_OK)
        job->rc = closed;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: pair_bench SOCKET CHANNEL SIZE COUNT\n");
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
