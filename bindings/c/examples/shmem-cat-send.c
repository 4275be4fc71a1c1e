/* shmem-cat-send CHANNEL < FILE: standard input into a shmem-broker channel, in messages of up
 * to 64 KiB, then an end-of-stream mark. The broker is found as every client finds it
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

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: shmem-cat-send CHANNEL < FILE\n");
        return 2;
    }
    shmem_client *client = NULL;
    if (shmem_client_connect(NULL, &client) != SHMEM_OK)
        return fail("connect");
    shmem_producer *producer = NULL;
    if (shmem_producer_attach(client, argv[1], NULL, &producer) != SHMEM_OK) {
        int status = fail(argv[1]);
        shmem_client_free(client);
        return status;
    }
    shmem_client_free(client);

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
        ssize_t n = read(STDIN_FILENO, buf, chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "shmem-cat-send: reading standard input: %s\n", strerror(errno));
            free(buf);
            shmem_producer_free(producer); /* no end-of-stream: the stream is incomplete */
            return 1;
        }
        if (n == 0)
            break;
        if (shmem_send(producer, buf, (size_t)n) != SHMEM_OK) {
            int status = fail("send");
            free(buf);
            shmem_producer_free(producer);
            return status;
        }
    }
    free(buf);
    if (shmem_producer_close(producer) != SHMEM_OK)
        return fail("close");
    return 0;
}
