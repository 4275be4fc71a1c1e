/* shmem-cat-send [--copy] CHANNEL < FILE: standard input into a shmem-broker channel, in
 * messages of up to 64 KiB, then an end-of-stream mark. By default each message is read from
 * standard input straight into the ring (shmem_loan: no copy in between); --copy reads into a
 * buffer and sends that (shmem_send). The broker is found as every client finds it
 * ($SHMEM_BROKER_SOCKET, else the default socket). Exit 0 once everything is in the channel;
 * 1 with one line on stderr otherwise. */
#include <errno.h>
#include <shmem_broker.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int fail(const char *what) {
    fprintf(stderr, "shmem-cat-send: %s: %s\n", what, shmem_last_error_message());
    return 1;
}

/* Reads up to `len` bytes, fewer only at end of input; -1 on a read error. */
static ssize_t read_full(char *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(STDIN_FILENO, buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

/* One message through a loan: read into the ring, publish. A short last piece goes through a
 * plain send (a loan has the length it was made with). 1 at end of input, 0 to go on, -1 on
 * error (reported). */
static int send_loaned(shmem_producer *producer, size_t chunk, char *spare) {
    void *slot = NULL;
    if (shmem_loan(producer, chunk, &slot) != SHMEM_OK) {
        fail("loan");
        return -1;
    }
    ssize_t n = read_full(slot, chunk);
    if (n < 0) {
        fprintf(stderr, "shmem-cat-send: reading standard input: %s\n", strerror(errno));
        shmem_loan_abandon(producer);
        return -1;
    }
    if ((size_t)n == chunk) {
        if (shmem_loan_send(producer) != SHMEM_OK) {
            fail("send");
            return -1;
        }
        return 0;
    }
    memcpy(spare, slot, (size_t)n);
    shmem_loan_abandon(producer);
    if (n > 0 && shmem_send(producer, spare, (size_t)n) != SHMEM_OK) {
        fail("send");
        return -1;
    }
    return 1;
}

/* One message through a buffer. Same results as send_loaned. */
static int send_copied(shmem_producer *producer, size_t chunk, char *buf) {
    ssize_t n = read_full(buf, chunk);
    if (n < 0) {
        fprintf(stderr, "shmem-cat-send: reading standard input: %s\n", strerror(errno));
        return -1;
    }
    if (n > 0 && shmem_send(producer, buf, (size_t)n) != SHMEM_OK) {
        fail("send");
        return -1;
    }
    return (size_t)n < chunk ? 1 : 0;
}

int main(int argc, char **argv) {
    int copy = argc == 3 && strcmp(argv[1], "--copy") == 0;
    if (argc != 2 + copy) {
        fprintf(stderr, "usage: shmem-cat-send [--copy] CHANNEL < FILE\n");
        return 2;
    }
    const char *channel = argv[1 + copy];
    shmem_client *client = NULL;
    if (shmem_client_connect(NULL, &client) != SHMEM_OK)
        return fail("connect");
    shmem_producer *producer = NULL;
    int rc = shmem_producer_attach(client, channel, NULL, &producer);
    shmem_client_free(client);
    if (rc != SHMEM_OK)
        return fail(channel);

    size_t chunk = shmem_producer_max_message_len(producer);
    if (chunk > 64 * 1024)
        chunk = 64 * 1024;
    char *buf = malloc(chunk);
    if (buf == NULL) {
        fprintf(stderr, "shmem-cat-send: out of memory\n");
        shmem_producer_free(producer);
        return 1;
    }
    for (;;) {
        int step = copy ? send_copied(producer, chunk, buf) : send_loaned(producer, chunk, buf);
        if (step < 0) {
            free(buf);
            shmem_producer_free(producer); /* no end-of-stream: the stream is incomplete */
            return 1;
        }
        if (step > 0)
            break;
    }
    free(buf);
    if (shmem_producer_close(producer) != SHMEM_OK)
        return fail("close");
    return 0;
}
