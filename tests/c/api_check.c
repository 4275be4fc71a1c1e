/* What tests/c_binding.rs checks of the C API beyond the two examples, against a real broker
 * ($SHMEM_BROKER_SOCKET) and channel argv[1] (empty, one-to-one, 64 KiB): non-blocking calls,
 * the pollable fds, batches, a buffer too small, a loan held while sending, argument checks,
 * JSON listing, create and drop. Prints "ok" and exits 0, or names the first failed check. */
#include <poll.h>
#include <shmem_broker.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "api_check.c:%d: %s failed (last error: %s)\n", __LINE__, #cond, \
                    shmem_last_error_message());                                          \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

static size_t batch_seen;
static size_t batch_bytes;

static void count_message(void *ctx, const void *data, size_t len) {
    (void)data;
    *(int *)ctx += 1;
    batch_seen += 1;
    batch_bytes += len;
}

/* A callback that calls back into the consumer it is called for: refused, not re-entered. */
static int reentry_rc = 12345;

static void reenter(void *ctx, const void *data, size_t len) {
    (void)data;
    (void)len;
    char buf[16];
    size_t got = 0;
    reentry_rc = shmem_try_recv((shmem_consumer *)ctx, buf, sizeof buf, &got);
    const void *lent = NULL;
    if (shmem_try_recv_ref((shmem_consumer *)ctx, &lent, &got) != SHMEM_ERR_BUSY)
        reentry_rc = 54321;
    shmem_consumer_free((shmem_consumer *)ctx); /* ignored: the batch still uses it */
}

static int readable(int fd, int timeout_ms) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, timeout_ms) == 1;
}

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    const char *channel = argv[1];
    shmem_client *client = NULL;
    CHECK(shmem_client_connect(NULL, NULL) == SHMEM_ERR_INVALID_ARGUMENT);
    CHECK(strlen(shmem_last_error_message()) > 0);
    CHECK(shmem_client_connect("/nonexistent/socket", &client) == SHMEM_ERR_BROKER_NOT_RUNNING);
    CHECK(shmem_client_connect(NULL, &client) == SHMEM_OK);

    /* Create, list, info, drop. */
    shmem_channel_options options = {.capacity = 4096, .max_consumers = 2, .slow_consumer = 1};
    CHECK(shmem_channel_create(client, "c-api-made", &options) == SHMEM_OK);
    CHECK(shmem_channel_create(client, "c-api-made", NULL) == SHMEM_ERR_CHANNEL_EXISTS);
    options.open_existing = 1;
    CHECK(shmem_channel_create(client, "c-api-made", &options) == SHMEM_OK);
    options.slow_consumer = 7;
    CHECK(shmem_channel_create(client, "c-api-bad", &options) == SHMEM_ERR_INVALID_ARGUMENT);
    CHECK(shmem_channel_create(client, "bad name", NULL) == SHMEM_ERR_INVALID_NAME);
    char *json = NULL;
    CHECK(shmem_channel_list_json(client, &json) == SHMEM_OK);
    CHECK(strstr(json, "\"c-api-made\"") != NULL);
    shmem_string_free(json);
    CHECK(shmem_channel_info_json(client, "c-api-made", &json) == SHMEM_OK);
    CHECK(strstr(json, "\"max_consumers\":2") != NULL);
    shmem_string_free(json);
    CHECK(shmem_channel_info_json(client, "c-api-none", &json) == SHMEM_ERR_NO_SUCH_CHANNEL);
    CHECK(shmem_channel_drop(client, "c-api-made") == SHMEM_OK);

    /* Attach both sides; NULL handles and arguments are refused, not dereferenced. */
    shmem_producer *producer = NULL;
    shmem_consumer *consumer = NULL;
    shmem_attach_options durable = {.durable_name = "x", .reconnect = 0};
    CHECK(shmem_producer_attach(client, channel, &durable, &producer) ==
          SHMEM_ERR_INVALID_ARGUMENT);
    CHECK(shmem_producer_attach(client, channel, NULL, &producer) == SHMEM_OK);
    CHECK(shmem_consumer_attach(client, channel, NULL, &consumer) == SHMEM_OK);
    CHECK(shmem_send(NULL, "x", 1) == SHMEM_ERR_INVALID_ARGUMENT);
    CHECK(shmem_send(producer, NULL, 1) == SHMEM_ERR_INVALID_ARGUMENT);
    CHECK(shmem_producer_fd(NULL) == -1 && shmem_consumer_fd(NULL) == -1);
    CHECK(shmem_producer_max_message_len(producer) > 60000);

    /* Non-blocking receive on an empty channel; the fd turns readable with a message. */
    char buf[64];
    size_t len = 99;
    CHECK(shmem_try_recv(consumer, buf, sizeof buf, &len) == SHMEM_WOULD_BLOCK && len == 0);
    const void *data = NULL;
    CHECK(shmem_try_recv_ref(consumer, &data, &len) == SHMEM_WOULD_BLOCK && data == NULL);
    CHECK(shmem_try_send(producer, "hello", 5) == SHMEM_OK);
    CHECK(readable(shmem_consumer_fd(consumer), 5000));

    /* Too small a buffer: the length, and the message stays for the next receive. */
    CHECK(shmem_recv(consumer, buf, 2, &len) == SHMEM_ERR_BUFFER_TOO_SMALL && len == 5);
    CHECK(shmem_recv(consumer, buf, sizeof buf, &len) == SHMEM_OK && len == 5);
    CHECK(memcmp(buf, "hello", 5) == 0);
    /* ... and stays in the channel, not in the consumer: one freed after a buffer too small
     * (or a NULL buffer) loses nothing; the consumer that continues the stream gets it. */
    CHECK(shmem_send(producer, "kept", 4) == SHMEM_OK);
    CHECK(shmem_recv(consumer, buf, 2, &len) == SHMEM_ERR_BUFFER_TOO_SMALL && len == 4);
    CHECK(shmem_try_recv(consumer, NULL, sizeof buf, &len) == SHMEM_ERR_INVALID_ARGUMENT);
    shmem_consumer_free(consumer);
    CHECK(shmem_consumer_attach(client, channel, NULL, &consumer) == SHMEM_OK);
    CHECK(shmem_try_recv(consumer, buf, 3, &len) == SHMEM_ERR_BUFFER_TOO_SMALL && len == 4);
    CHECK(shmem_recv(consumer, buf, sizeof buf, &len) == SHMEM_OK && len == 4);
    CHECK(memcmp(buf, "kept", 4) == 0);
    /* The same for a durable consumer of a fan-out channel, when it comes back. */
    options = (shmem_channel_options){.capacity = 4096, .max_consumers = 2};
    CHECK(shmem_channel_create(client, "c-api-keep", &options) == SHMEM_OK);
    shmem_attach_options keep = {.durable_name = "keep", .reconnect = 0};
    shmem_consumer *durable_consumer = NULL;
    shmem_producer *fanout_producer = NULL;
    CHECK(shmem_consumer_attach(client, "c-api-keep", &keep, &durable_consumer) == SHMEM_OK);
    CHECK(shmem_producer_attach(client, "c-api-keep", NULL, &fanout_producer) == SHMEM_OK);
    CHECK(shmem_send(fanout_producer, "durable", 7) == SHMEM_OK);
    CHECK(shmem_recv(durable_consumer, buf, 2, &len) == SHMEM_ERR_BUFFER_TOO_SMALL && len == 7);
    shmem_consumer_free(durable_consumer);
    CHECK(shmem_consumer_attach(client, "c-api-keep", &keep, &durable_consumer) == SHMEM_OK);
    CHECK(shmem_recv(durable_consumer, buf, sizeof buf, &len) == SHMEM_OK && len == 7);
    CHECK(memcmp(buf, "durable", 7) == 0);
    shmem_consumer_free(durable_consumer);
    shmem_producer_free(fanout_producer);
    CHECK(shmem_channel_drop(client, "c-api-keep") == SHMEM_OK);

    /* A message left by a buffer too small, lent by a borrowed receive, blocks the consumer's
     * other calls as any borrowed message does; released, it is gone. */
    int pending_calls = 0;
    size_t pending_count = 0;
    CHECK(shmem_send(producer, "pending", 7) == SHMEM_OK);
    CHECK(shmem_recv(consumer, buf, 2, &len) == SHMEM_ERR_BUFFER_TOO_SMALL && len == 7);
    CHECK(shmem_recv_ref(consumer, &data, &len) == SHMEM_OK && len == 7);
    CHECK(memcmp(data, "pending", 7) == 0);
    CHECK(shmem_try_recv(consumer, buf, sizeof buf, &len) == SHMEM_ERR_BUSY);
    CHECK(shmem_try_recv_ref(consumer, &data, &len) == SHMEM_ERR_BUSY);
    CHECK(shmem_recv_batch(consumer, 4, count_message, &pending_calls, &pending_count) ==
          SHMEM_ERR_BUSY);
    shmem_recv_ref_release(consumer);
    CHECK(shmem_try_recv(consumer, buf, sizeof buf, &len) == SHMEM_WOULD_BLOCK);
    /* A message left by a buffer too small goes to a batch; the consumer is idle after it. */
    CHECK(shmem_send(producer, "pending", 7) == SHMEM_OK);
    CHECK(shmem_recv(consumer, buf, 2, &len) == SHMEM_ERR_BUFFER_TOO_SMALL && len == 7);
    CHECK(shmem_recv_batch(consumer, 4, count_message, &pending_calls, &pending_count) ==
              SHMEM_OK &&
          pending_count == 1 && pending_calls == 1);
    CHECK(shmem_try_recv(consumer, buf, sizeof buf, &len) == SHMEM_WOULD_BLOCK);
    batch_seen = 0;
    batch_bytes = 0;

    /* A loan blocks the producer's other calls until sent; an abandoned one sends nothing. */
    void *slot = NULL;
    CHECK(shmem_loan(producer, 3, &slot) == SHMEM_OK && slot != NULL);
    CHECK(shmem_send(producer, "no", 2) == SHMEM_ERR_BUSY);
    memcpy(slot, "abc", 3);
    CHECK(shmem_loan_send(producer) == SHMEM_OK);
    CHECK(shmem_loan_send(producer) == SHMEM_ERR_INVALID_ARGUMENT);
    CHECK(shmem_try_loan(producer, 4, &slot) == SHMEM_OK);
    memcpy(slot, "gone", 4);
    shmem_loan_abandon(producer);
    /* A borrowed message blocks the consumer's other calls until released. */
    CHECK(shmem_recv_ref(consumer, &data, &len) == SHMEM_OK && len == 3);
    CHECK(memcmp(data, "abc", 3) == 0);
    CHECK(shmem_try_recv(consumer, buf, sizeof buf, &len) == SHMEM_ERR_BUSY);
    shmem_recv_ref_release(consumer);
    CHECK(shmem_try_recv(consumer, buf, sizeof buf, &len) == SHMEM_WOULD_BLOCK);

    /* Batches. */
    shmem_message messages[3] = {{"one", 3}, {"two", 3}, {"three", 5}};
    CHECK(shmem_send_batch(producer, messages, 3) == SHMEM_OK);
    size_t sent = 0;
    CHECK(shmem_try_send_batch(producer, messages, 2, &sent) == SHMEM_OK && sent == 2);
    int calls = 0;
    size_t count = 0;
    while (batch_seen < 5) {
        CHECK(shmem_recv_batch(consumer, 16, count_message, &calls, &count) == SHMEM_OK);
        CHECK(count >= 1);
    }
    CHECK(batch_seen == 5 && batch_bytes == 17 && calls == 5);
    CHECK(shmem_send(producer, "re", 2) == SHMEM_OK);
    CHECK(shmem_recv_batch(consumer, 1, reenter, consumer, &count) == SHMEM_OK && count == 1);
    CHECK(reentry_rc == SHMEM_ERR_BUSY);
    CHECK(shmem_recv_batch(consumer, 16, NULL, NULL, &count) == SHMEM_ERR_INVALID_ARGUMENT);

    /* A full ring: try_send says so; the producer's fd turns readable once there is room. */
    static char big[4000];
    int full = 0;
    for (int i = 0; i < 1000 && !full; i++) {
        int rc = shmem_try_send(producer, big, sizeof big);
        CHECK(rc == SHMEM_OK || rc == SHMEM_WOULD_BLOCK);
        full = rc == SHMEM_WOULD_BLOCK;
    }
    CHECK(full);
    CHECK(shmem_recv(consumer, big, sizeof big, &len) == SHMEM_OK && len == sizeof big);
    CHECK(readable(shmem_producer_fd(producer), 5000));
    CHECK(shmem_try_send(producer, big, sizeof big) == SHMEM_OK);

    /* End-of-stream after the rest. */
    CHECK(shmem_producer_close(producer) == SHMEM_OK);
    int rc;
    while ((rc = shmem_recv(consumer, big, sizeof big, &len)) == SHMEM_OK)
        ;
    CHECK(rc == SHMEM_END_OF_STREAM && len == 0);
    shmem_consumer_free(consumer);
    shmem_client_free(client);
    shmem_producer_free(NULL);
    shmem_consumer_free(NULL);
    printf("ok\n");
    return 0;
}
