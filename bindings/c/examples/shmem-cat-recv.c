/* shmem-cat-recv [--copy] CHANNEL > FILE: a shmem-broker channel to standard output, message
 * after message, until its producer's end-of-stream mark. By default each message is written
 * to standard output from where it lies in the ring (shmem_recv_ref: no copy in between);
 * --copy receives into a buffer first (shmem_recv). Exit 0 at end-of-stream; 1 with one line
 * on stderr otherwise (a producer that went away without finishing included). */
#include <errno.h>
#include <shmem_broker.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int write_all(const char *data, size_t len) {
    while (len > 0) {
        ssize_t n = write(STDOUT_FILENO, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Borrowed: write each message from the ring, then give its space back. */
static int receive_borrowed(shmem_consumer *consumer) {
    for (;;) {
        const void *data = NULL;
        size_t len = 0;
        int rc = shmem_recv_ref(consumer, &data, &len);
        if (rc == SHMEM_END_OF_STREAM)
            return 0;
        if (rc != SHMEM_OK) {
            fprintf(stderr, "shmem-cat-recv: %s\n", shmem_last_error_message());
            return 1;
        }
        int written = write_all(data, len);
        shmem_recv_ref_release(consumer);
        if (written != 0) {
            fprintf(stderr, "shmem-cat-recv: writing standard output: %s\n", strerror(errno));
            return 1;
        }
    }
}

/* Copied: receive into a buffer that grows to the largest message. */
static int receive_copied(shmem_consumer *consumer) {
    size_t capacity = 64 * 1024;
    char *buf = malloc(capacity);
    int status = 1;
    if (buf == NULL)
        fprintf(stderr, "shmem-cat-recv: out of memory\n");
    while (buf != NULL) {
        size_t len = 0;
        int rc = shmem_recv(consumer, buf, capacity, &len);
        if (rc == SHMEM_ERR_BUFFER_TOO_SMALL) {
            /* The message waits for a buffer of `len` bytes. */
            char *larger = realloc(buf, len);
            if (larger == NULL) {
                fprintf(stderr, "shmem-cat-recv: out of memory for a %zu-byte message\n", len);
                break;
            }
            buf = larger;
            capacity = len;
            continue;
        }
        if (rc == SHMEM_END_OF_STREAM) {
            status = 0;
            break;
        }
        if (rc != SHMEM_OK) {
            fprintf(stderr, "shmem-cat-recv: %s\n", shmem_last_error_message());
            break;
        }
        if (write_all(buf, len) != 0) {
            fprintf(stderr, "shmem-cat-recv: writing standard output: %s\n", strerror(errno));
            break;
        }
    }
    free(buf);
    return status;
}

int main(int argc, char **argv) {
    int copy = argc == 3 && strcmp(argv[1], "--copy") == 0;
    if (argc != 2 + copy) {
        fprintf(stderr, "usage: shmem-cat-recv [--copy] CHANNEL > FILE\n");
        return 2;
    }
    const char *channel = argv[1 + copy];
    shmem_client *client = NULL;
    if (shmem_client_connect(NULL, &client) != SHMEM_OK) {
        fprintf(stderr, "shmem-cat-recv: connect: %s\n", shmem_last_error_message());
        return 1;
    }
    shmem_consumer *consumer = NULL;
    int rc = shmem_consumer_attach(client, channel, NULL, &consumer);
    shmem_client_free(client);
    if (rc != SHMEM_OK) {
        fprintf(stderr, "shmem-cat-recv: %s: %s\n", channel, shmem_last_error_message());
        return 1;
    }
    int status = copy ? receive_copied(consumer) : receive_borrowed(consumer);
    shmem_consumer_free(consumer);
    return status;
}
