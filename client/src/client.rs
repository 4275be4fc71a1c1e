//! `Client`: the control connection to a broker, and the door to producers and consumers.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::attachment::AttachOptions;
use crate::connection::Connection;
use crate::consumer::Consumer;
use crate::discovery::client_socket_path;
use crate::error::{Error, Result};
use crate::producer::Producer;
use crate::wire::{ChannelInfo, ChannelList, Dropped, Event, Request, SlowConsumer, StatusInfo};

/// A connection to a shmem-broker.
///
/// ```no_run
/// use shmem_broker_client::Client;
///
/// let client = Client::connect_default()?;
/// let mut producer = client.producer("frames")?;
/// producer.send(b"hello")?;
/// producer.close()?;
///
/// let mut consumer = client.consumer("frames")?;
/// while let Some(message) = consumer.recv()? {
///     println!("{} bytes", message.len());
/// }
/// # Ok::<(), shmem_broker_client::Error>(())
/// ```
///
/// Each producer or consumer gets a connection of its own, held open for as long as it is
/// attached: the broker frees the attachment the moment that connection closes, whether the
/// endpoint was dropped or its process died.
pub struct Client {
    socket: PathBuf,
    control: Mutex<Connection>,
}

/// A connection that watches the broker; see [`Client::monitor`].
pub struct Monitor {
    conn: Connection,
}

impl Monitor {
    /// The next event, blocking until there is one: [`Event::Monitor`] or
    /// [`Event::MonitorDropped`]. `Ok(None)` when the broker closed the connection.
    pub fn next_event(&mut self) -> Result<Option<Event>> {
        Ok(self.conn.read_event()?.map(|(event, _fds)| event))
    }
}

/// An attach being set up; see [`Client::attach`].
pub struct Attach<'a> {
    socket: &'a Path,
    channel: &'a str,
    options: AttachOptions,
}

impl Attach<'_> {
    /// Re-attach by itself when the broker restarts (default: off). Without it, data keeps
    /// flowing while the broker is away, but the endpoint no longer holds its slot at the
    /// broker. With it, the endpoint claims its slot again as soon as the broker is back (the
    /// ring must have survived in systemd's fd store), and its calls fail with
    /// [`Error::Reattach`] if another client took the slot meanwhile.
    pub fn reconnect(mut self, reconnect: bool) -> Self {
        self.options.reconnect = reconnect;
        self
    }

    /// For callers that spin on `try_send`/`try_recv` and never wait on `ready_fd()`: a
    /// would-block then does not ask the peer to signal the eventfd, which would cost the
    /// peer a syscall per message (default: off). Blocking calls still sleep and wake as usual.
    pub fn busy_poll(mut self, busy_poll: bool) -> Self {
        self.options.busy_poll = busy_poll;
        self
    }

    /// Attach as the durable consumer `name` of a channel with `max_consumers > 1`: the
    /// broker keeps this consumer's queue while it is away (up to the ring capacity, under
    /// the channel's slow-consumer policy), and the next consumer attaching under the same
    /// name resumes where it stopped. (Only one attaches under a name at a time.)
    pub fn durable(mut self, name: &str) -> Self {
        self.options.name = Some(name.to_string());
        self
    }

    /// Attaches as the channel's producer (or one of them).
    pub fn producer(self) -> Result<Producer> {
        Producer::attach(self.socket, self.channel, self.options)
    }

    /// Attaches as the channel's consumer (or one of them).
    pub fn consumer(self) -> Result<Consumer> {
        Consumer::attach(self.socket, self.channel, self.options)
    }
}

/// A channel being set up: the one way to create a channel; see [`Client::channel`].
#[must_use = "a channel is made only by `create()` or `open_or_create()`"]
pub struct NewChannel<'a> {
    client: &'a Client,
    name: String,
    capacity: Option<u64>,
    producers: Vec<String>,
    consumers: Vec<String>,
    max_producers: Option<u32>,
    max_consumers: Option<u32>,
    slow_consumer: Option<SlowConsumer>,
}

impl NewChannel<'_> {
    /// Ring data bytes (rounded up to 4 KiB) [default: the broker's `default_capacity`].
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.capacity = Some(bytes);
        self
    }

    /// Who else may attach as producer: `*`, a user name or uid, `@group` or `@gid`.
    pub fn producers<S: Into<String>>(mut self, who: impl IntoIterator<Item = S>) -> Self {
        self.producers.extend(who.into_iter().map(Into::into));
        self
    }

    /// Who else may attach as consumer.
    pub fn consumers<S: Into<String>>(mut self, who: impl IntoIterator<Item = S>) -> Self {
        self.consumers.extend(who.into_iter().map(Into::into));
        self
    }

    /// Producers attached at once, 1 to 64 [default: 1]. Above 1, each producer has rings of
    /// its own and consumers merge them.
    pub fn max_producers(mut self, count: u32) -> Self {
        self.max_producers = Some(count);
        self
    }

    /// Consumers attached at once (durable ones counted while away), 1 to 64 [default: 1].
    /// Above 1, each consumer receives every message, through rings of its own.
    pub fn max_consumers(mut self, count: u32) -> Self {
        self.max_consumers = Some(count);
        self
    }

    /// What a consumer whose ring is full costs [default: [`SlowConsumer::Block`]].
    pub fn slow_consumer(mut self, policy: SlowConsumer) -> Self {
        self.slow_consumer = Some(policy);
        self
    }

    /// Creates the channel, owned by the calling uid (needs root or an admin group). Fails
    /// with [`ErrorCode::ChannelExists`](crate::ErrorCode::ChannelExists) if it exists.
    pub fn create(self) -> Result<ChannelInfo> {
        self.create_request()
    }

    /// Creates the channel unless one of that name exists already, and returns what the
    /// broker has. An existing channel is taken as it is: compare the returned
    /// [`ChannelInfo`] with what was asked for if the difference matters. (Two processes
    /// racing here both succeed, one of them creating.)
    pub fn open_or_create(self) -> Result<ChannelInfo> {
        let client = self.client;
        let name = self.name.clone();
        match self.create_request() {
            Err(Error::Broker {
                code: crate::wire::ErrorCode::ChannelExists,
                ..
            }) => client.info(&name),
            other => other,
        }
    }

    fn create_request(self) -> Result<ChannelInfo> {
        self.client.call(&Request::Create {
            channel: self.name,
            capacity: self.capacity,
            producers: self.producers,
            consumers: self.consumers,
            max_producers: self.max_producers,
            max_consumers: self.max_consumers,
            slow_consumer: self.slow_consumer,
        })
    }
}

impl Client {
    /// Connects to the broker listening at `socket`.
    pub fn connect(socket: impl AsRef<Path>) -> Result<Client> {
        let socket = socket.as_ref().to_path_buf();
        let control = Connection::connect(&socket)?;
        Ok(Client {
            socket,
            control: Mutex::new(control),
        })
    }

    /// Connects to `$SHMEM_BROKER_SOCKET`, else the broker's default socket path.
    pub fn connect_default() -> Result<Client> {
        Client::connect(client_socket_path(None))
    }

    /// The socket path this client connected to.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Attaches to `channel` as its producer.
    pub fn producer(&self, channel: &str) -> Result<Producer> {
        self.attach(channel).producer()
    }

    /// Attaches to `channel` as its consumer.
    pub fn consumer(&self, channel: &str) -> Result<Consumer> {
        self.attach(channel).consumer()
    }

    /// Attaches with options:
    ///
    /// ```no_run
    /// # let client = shmem_broker_client::Client::connect_default()?;
    /// let mut consumer = client.attach("frames").reconnect(true).consumer()?;
    /// # Ok::<(), shmem_broker_client::Error>(())
    /// ```
    pub fn attach<'a>(&'a self, channel: &'a str) -> Attach<'a> {
        Attach {
            socket: &self.socket,
            channel,
            options: AttachOptions::default(),
        }
    }

    /// Watches what happens at the broker (attaches, detaches, drops, evictions, losses,
    /// reloads) on a connection of its own, for every channel this user may watch or only
    /// `channel`.
    pub fn monitor(&self, channel: Option<&str>) -> Result<Monitor> {
        let mut conn = Connection::connect(&self.socket)?;
        conn.call(&Request::Monitor {
            channel: channel.map(str::to_string),
        })?;
        Ok(Monitor { conn })
    }

    /// The broker's status: versions, uptime, socket, quota usage.
    pub fn status(&self) -> Result<StatusInfo> {
        self.call(&Request::Status)
    }

    /// Every channel.
    pub fn list(&self) -> Result<Vec<ChannelInfo>> {
        self.call::<ChannelList>(&Request::List)
            .map(|list| list.channels)
    }

    /// One channel.
    pub fn info(&self, channel: &str) -> Result<ChannelInfo> {
        self.call(&Request::Info {
            channel: channel.to_string(),
        })
    }

    /// Sets up a channel to create (owned by the calling uid; needs root or an admin group):
    /// the one way to create a channel, with [`NewChannel::create`] or
    /// [`NewChannel::open_or_create`] at the end.
    ///
    /// ```no_run
    /// # use shmem_broker_client::{Client, SlowConsumer};
    /// # let client = Client::connect_default()?;
    /// client
    ///     .channel("camera")
    ///     .capacity(16 << 20)
    ///     .max_consumers(3)
    ///     .slow_consumer(SlowConsumer::Drop)
    ///     .create()?;
    /// # Ok::<(), shmem_broker_client::Error>(())
    /// ```
    pub fn channel(&self, name: &str) -> NewChannel<'_> {
        NewChannel {
            client: self,
            name: name.to_string(),
            capacity: None,
            producers: Vec::new(),
            consumers: Vec::new(),
            max_producers: None,
            max_consumers: None,
            slow_consumer: None,
        }
    }

    /// Forgets the durable consumer `consumer` of `channel` and its unread messages, so
    /// producers stop keeping messages for it (needs root or an admin group).
    pub fn drop_consumer(&self, channel: &str, consumer: &str) -> Result<()> {
        self.call::<Dropped>(&Request::DropConsumer {
            channel: channel.to_string(),
            consumer: consumer.to_string(),
        })
        .map(|_| ())
    }

    /// Drops a channel; attached endpoints get [`Error::ChannelDropped`] on their next call.
    pub fn drop_channel(&self, channel: &str) -> Result<()> {
        self.call::<Dropped>(&Request::Drop {
            channel: channel.to_string(),
        })
        .map(|_| ())
    }

    fn call<T: serde::de::DeserializeOwned>(&self, request: &Request) -> Result<T> {
        let mut control = self
            .control
            .lock()
            .map_err(|_| Error::Protocol("control connection poisoned by a panic".into()))?;
        match control.call_for(request) {
            // The broker closed the idle control connection (its `request_timeout` for clients
            // that have not sent a request yet, or a restart) before this request went out:
            // sending it again on a fresh connection cannot do anything twice.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
                *control = Connection::connect(&self.socket)?;
                control.call_for(request)
            }
            other => other,
        }
    }
}
