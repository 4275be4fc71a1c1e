//! From a read [`Document`] to a [`Config`]: every setting checked in order, defaults filled
//! in, and the checks that involve several settings (capacities against `max_capacity`, the
//! number of channels against `max_channels`, duplicate channel names).

use super::error::Source;
use super::model::{ChannelConfig, Config, PerUidQuotas};
use super::parse::{ChannelTable, Document};
use super::values::{access_list, admin_gids, Field, MIN_CAPACITY, RING_MAX_CAPACITY};
use super::ConfigError;
use crate::access::AccessList;
use shmem_broker_proto::names::validate_channel_name;
use shmem_broker_proto::size::format_size;
use shmem_broker_proto::wire::SlowConsumer;
use toml::Spanned;

/// The settings `document` describes, or the first thing wrong with them.
pub(super) fn config(source: Source<'_>, document: &Document) -> Result<Config, ConfigError> {
    let field = |path: &str, value| Field::new(source, path, value);
    let mut config = Config {
        source: Some(source.file.to_path_buf()),
        ..Config::default()
    };
    if let Some(value) = &document.socket {
        config.socket = Some(field("socket", value).socket_path()?);
    }
    if let Some(value) = &document.socket_mode {
        config.socket_mode = field("socket_mode", value).socket_mode()?;
    }
    if let Some(value) = &document.max_capacity {
        let max = field("max_capacity", value);
        let bytes = max.size()?;
        if bytes > RING_MAX_CAPACITY {
            return Err(max.bad(format!(
                "max_capacity {} is above the largest ring this broker can make ({})",
                format_size(bytes),
                format_size(RING_MAX_CAPACITY)
            )));
        }
        if bytes < MIN_CAPACITY {
            return Err(max.bad(format!(
                "max_capacity {} is below the minimum channel capacity of {}",
                format_size(bytes),
                format_size(MIN_CAPACITY)
            )));
        }
        config.max_capacity = bytes;
    }
    match (&document.default_capacity, &document.max_capacity) {
        (Some(value), _) => {
            config.default_capacity = field("default_capacity", value).capacity(config.max_capacity)?
        }
        (None, Some(max)) if config.default_capacity > config.max_capacity => {
            return Err(field("max_capacity", max).bad(format!(
                "max_capacity {} is below the built-in default_capacity of {}; set default_capacity too",
                format_size(config.max_capacity),
                format_size(config.default_capacity)
            )))
        }
        (None, _) => {}
    }
    if let Some(value) = &document.max_channels {
        config.max_channels = field("max_channels", value).count()?;
    }
    if let Some(value) = &document.max_clients {
        config.max_clients = field("max_clients", value).count()?;
    }
    if let Some(list) = &document.admin_groups {
        config.admin_gids = admin_gids(source, list)?;
    }
    if let Some(value) = &document.max_ring_bytes {
        config.max_ring_bytes = field("max_ring_bytes", value).size()?;
    }
    if let Some(value) = &document.request_timeout {
        config.request_timeout = field("request_timeout", value).duration()?;
    }
    if let Some(table) = &document.per_uid {
        let quotas: &mut PerUidQuotas = &mut config.per_uid;
        let each = [
            (&table.max_clients, "max_clients", &mut quotas.max_clients),
            (
                &table.max_channels,
                "max_channels",
                &mut quotas.max_channels,
            ),
            (
                &table.max_attaches_per_sec,
                "max_attaches_per_sec",
                &mut quotas.max_attaches_per_sec,
            ),
            (
                &table.max_durable_consumers,
                "max_durable_consumers",
                &mut quotas.max_durable_consumers,
            ),
        ];
        for (value, key, slot) in each {
            if let Some(value) = value {
                *slot = field(&format!("per_uid.{key}"), value).count()?;
            }
        }
        if let Some(value) = &table.max_ring_bytes {
            quotas.max_ring_bytes = field("per_uid.max_ring_bytes", value).size()?;
        }
    }
    if let Some(table) = &document.logging {
        if let Some(value) = &table.level {
            config.log_level = Some(field("logging.level", value).level()?);
        }
        if let Some(value) = &table.format {
            config.log_format = Some(field("logging.format", value).parsed()?);
        }
    }
    if let Some(channels) = &document.channel {
        config.channels = self::channels(source, document, channels, &config)?;
    }
    Ok(config)
}

/// The `[[channel]]` tables, in file order.
fn channels(
    source: Source<'_>,
    document: &Document,
    tables: &[Spanned<ChannelTable>],
    config: &Config,
) -> Result<Vec<ChannelConfig>, ConfigError> {
    if tables.len() > config.max_channels {
        let message = format!(
            "max_channels is {} but the file defines {} channels",
            config.max_channels,
            tables.len()
        );
        return Err(match &document.max_channels {
            Some(limit) => Field::new(source, "max_channels", limit).bad(message),
            None => source.error(
                tables.get(config.max_channels).map(Spanned::span),
                Some(&format!("channel[{}]", config.max_channels)),
                format!(
                    "more channels than max_channels ({}); raise max_channels",
                    config.max_channels
                ),
            ),
        });
    }
    // Name and the line it was first defined on, to report duplicates.
    let mut seen: Vec<(&str, usize)> = Vec::new();
    let mut channels = Vec::with_capacity(tables.len());
    for (index, table) in tables.iter().enumerate() {
        let prefix = format!("channel[{index}]");
        let field = |key: &str, value| Field::new(source, format!("{prefix}.{key}"), value);
        let Some(name_value) = &table.get_ref().name else {
            return Err(source.error(
                Some(table.span()),
                Some(&format!("{prefix}.name")),
                "missing: every [[channel]] needs a name",
            ));
        };
        let name_field = field("name", name_value);
        let name = name_field.string()?;
        validate_channel_name(name).map_err(|m| name_field.bad(m))?;
        if let Some((_, first)) = seen.iter().find(|(seen, _)| *seen == name) {
            return Err(name_field.bad(format!(
                "duplicate channel name {name:?} (first defined on line {first})"
            )));
        }
        seen.push((name, source.line_of(name_value.span())));
        let table = table.get_ref();
        let list = |key: &str, list: &Option<Spanned<_>>| match list {
            Some(list) => access_list(source, &format!("{prefix}.{key}"), list),
            None => Ok(AccessList::anyone()),
        };
        channels.push(ChannelConfig {
            name: name.to_string(),
            capacity: match &table.capacity {
                Some(value) => field("capacity", value).capacity(config.max_capacity)?,
                None => config.default_capacity,
            },
            producers: list("producers", &table.producers)?,
            consumers: list("consumers", &table.consumers)?,
            max_producers: match &table.max_producers {
                Some(value) => field("max_producers", value).endpoints()?,
                None => 1,
            },
            max_consumers: match &table.max_consumers {
                Some(value) => field("max_consumers", value).endpoints()?,
                None => 1,
            },
            slow_consumer: match &table.slow_consumer {
                Some(value) => field("slow_consumer", value).parsed()?,
                None => SlowConsumer::default(),
            },
        });
    }
    Ok(channels)
}
