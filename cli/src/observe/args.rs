//! Command-line arguments of `observe`, `status` and `list`.
//!
//! Filter flags keep their order: `--not` negates the *next* filter flag,
//! which a derived clap struct cannot express. [`ObserveArgs`] therefore
//! implements `clap::Args` by hand: the ordinary options come from the
//! derived [`ObserveOpts`], the filter flags are added from
//! [`filters::FILTER_FLAGS`], and `from_arg_matches` rebuilds their
//! command-line order from clap's value indices.


use clap::{Arg, ArgAction, ArgMatches, Command, FromArgMatches};

use super::filters::{self, Token};
use super::time::TimeFormat;

/// `sightline observe`.
#[derive(Debug, Clone)]
pub struct ObserveArgs {
    pub opts: ObserveOpts,
    /// Filter flags and `--not`, in command-line order.
    pub filters: Vec<Token>,
    /// `observe agent-events …` instead of flows.
    pub agent_events: Option<super::agent_events::AgentEventsArgs>,
}

/// The options of `observe` other than the filter flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ObserveOpts {
    /// Get the last N flows (default 20 unless --follow, --since or --until).
    #[arg(long, value_name = "N", help_heading = "Selectors")]
    pub last: Option<u64>,
    /// Get the first N flows still in the server's buffer.
    #[arg(long, value_name = "N", help_heading = "Selectors")]
    pub first: Option<u64>,
    /// Get every flow still in the server's buffer.
    #[arg(long, help_heading = "Selectors")]
    pub all: bool,
    /// Keep streaming new flows after the backlog.
    #[arg(short = 'f', long, help_heading = "Selectors")]
    pub follow: bool,
    /// Flows since this time: a duration ago (3s, 5m, 2h30m) or a time
    /// (2024-11-26T10:39:56Z; without an offset the time is UTC).
    #[arg(long, value_name = "TIME", help_heading = "Selectors")]
    pub since: Option<String>,
    /// Flows until this time (same forms as --since).
    #[arg(long, value_name = "TIME", help_heading = "Selectors")]
    pub until: Option<String>,

    /// Also include flows matching this FlowFilter, given as JSON (hubble's
    /// field names, e.g. '{"source_pod":["x/a"]}'); repeatable.
    #[arg(long, value_name = "JSON", help_heading = "Raw filters")]
    pub allowlist: Vec<String>,
    /// Exclude flows matching this FlowFilter, given as JSON; repeatable.
    #[arg(long, value_name = "JSON", help_heading = "Raw filters")]
    pub denylist: Vec<String>,
    /// Print the filters the flags make (as --allowlist/--denylist JSON) and
    /// exit without connecting.
    #[arg(long, help_heading = "Raw filters")]
    pub print_raw_filters: bool,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "compact", help_heading = "Output")]
    pub output: OutputFormat,
    /// Colour the compact and dict output.
    #[arg(long, value_enum, default_value = "auto", help_heading = "Output")]
    pub color: ColorWhen,
    /// Time format of the compact, dict and table output (times are UTC).
    #[arg(long, value_enum, default_value = "StampMilli", help_heading = "Output")]
    pub time_format: TimeFormat,
    /// Print the name of the node that observed each flow.
    #[arg(long, help_heading = "Output")]
    pub print_node_name: bool,
    /// Print the policies that allowed or denied each flow.
    #[arg(long, help_heading = "Output")]
    pub print_policy_names: bool,
    /// Print Sightline's per-connection packet and byte counters, when the
    /// server attaches them.
    #[arg(long, help_heading = "Output")]
    pub print_counters: bool,
    /// Print addresses instead of pod, service and DNS names.
    #[arg(long, help_heading = "Output")]
    pub numeric: bool,
    /// Ask the server for these flow fields only (comma-separated
    /// flow.proto paths, e.g. time,source.pod_name,verdict); the others
    /// arrive empty.
    #[arg(long, value_name = "FIELDS", value_delimiter = ',', help_heading = "Output")]
    pub experimental_field_mask: Vec<String>,
    /// With the compact, dict and table formats, ask the server only for
    /// the fields they print (smaller messages, faster streams).
    #[arg(long, help_heading = "Output")]
    pub experimental_use_default_field_masks: bool,

    #[command(flatten)]
    pub conn: ConnectionArgs,
}

/// `-o` of `observe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One line per flow.
    Compact,
    /// KEY: VALUE blocks.
    Dict,
    /// GetFlowsResponse in proto3 JSON, one per line (alias of jsonpb).
    Json,
    /// GetFlowsResponse in proto3 JSON, one per line.
    Jsonpb,
    /// Aligned columns (not with --follow).
    #[value(alias = "tab")]
    Table,
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorWhen {
    /// When stdout is a terminal and NO_COLOR is not set.
    Auto,
    Always,
    Never,
}

pub use super::connection::ConnectionArgs;

/// `sightline status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "compact")]
    pub output: StatusOutput,
    #[command(flatten)]
    pub conn: ConnectionArgs,
}

/// `-o` of `status` and `list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusOutput {
    /// Human-readable.
    #[value(alias = "table")]
    Compact,
    /// proto3 JSON of the response.
    Json,
}

/// `sightline list …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ListCommand {
    /// The nodes behind the server, their state and flow counts.
    Nodes(ListArgs),
    /// Namespaces that had flows in the last hour.
    Namespaces(ListArgs),
}

/// Options of `list nodes` and `list namespaces`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "compact")]
    pub output: StatusOutput,
    #[command(flatten)]
    pub conn: ConnectionArgs,
}

const FILTER_HEADING: &str = "Filters (repeat a flag to OR its values; different flags AND)";

fn filter_arg(spec: &filters::FlagSpec) -> Arg {
    let mut arg =
        Arg::new(spec.name).long(spec.name).help(spec.help).help_heading(FILTER_HEADING).action(ArgAction::Append);
    if let Some(c) = spec.short {
        arg = arg.short(c);
    }
    match spec.value_name {
        Some(v) => arg.value_name(v).num_args(1).allow_hyphen_values(false),
        None => arg.num_args(0).default_missing_value(""),
    }
}

impl clap::Args for ObserveArgs {
    fn augment_args(cmd: Command) -> Command {
        let cmd = <ObserveOpts as clap::Args>::augment_args(cmd);
        let events = <super::agent_events::AgentEventsArgs as clap::Args>::augment_args(
            Command::new("agent-events").about("Prints what the collectors did (started, policies updated, endpoints created or deleted), like `hubble observe agent-events`"),
        );
        filters::FILTER_FLAGS
            .iter()
            .fold(cmd, |cmd, spec| cmd.arg(filter_arg(spec)))
            .subcommand(events)
            .args_conflicts_with_subcommands(true)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ObserveArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let opts = ObserveOpts::from_arg_matches(matches)?;
        let mut ordered: Vec<(usize, Token)> = Vec::new();
        for spec in filters::FILTER_FLAGS {
            let (Some(indices), Some(values)) = (matches.indices_of(spec.name), matches.get_many::<String>(spec.name))
            else {
                continue;
            };
            for (index, value) in indices.zip(values) {
                ordered.push((index, Token { flag: spec.name, value: value.clone() }));
            }
        }
        ordered.sort_by_key(|(i, _)| *i);
        let agent_events = match matches.subcommand() {
            Some(("agent-events", sub)) => Some(super::agent_events::AgentEventsArgs::from_arg_matches(sub)?),
            _ => None,
        };
        Ok(Self { opts, filters: ordered.into_iter().map(|(_, t)| t).collect(), agent_events })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(clap::Parser)]
    struct Probe {
        #[command(subcommand)]
        cmd: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        Observe(ObserveArgs),
        Status(StatusArgs),
        List {
            #[command(subcommand)]
            what: ListCommand,
        },
    }

    /// Parses `sightline observe ARGS…` the way main.rs does.
    pub(crate) fn parse(args: &[&str]) -> Result<ObserveArgs, clap::Error> {
        use clap::Parser as _;
        let argv = ["sightline", "observe"].into_iter().chain(args.iter().copied());
        match Probe::try_parse_from(argv)?.cmd {
            Sub::Observe(a) => Ok(a),
            _ => unreachable!("observe parses as observe"),
        }
    }

    fn flags(args: &ObserveArgs) -> Vec<(&str, &str)> {
        args.filters.iter().map(|t| (t.flag, t.value.as_str())).collect()
    }

    #[test]
    fn the_command_definition_is_valid() {
        use clap::CommandFactory as _;
        Probe::command().debug_assert();
    }

    #[test]
    fn filter_flags_keep_their_order_with_not() {
        let a = parse(&[
            "--from-pod",
            "x/a",
            "--not",
            "--to-port",
            "53",
            "-t",
            "trace:to-endpoint",
            "--not",
            "-4",
            "--verdict=DROPPED",
            "-l",
            "app=web",
            "-6",
        ])
        .expect("parses");
        assert_eq!(
            flags(&a),
            vec![
                ("from-pod", "x/a"),
                ("not", ""),
                ("to-port", "53"),
                ("type", "trace:to-endpoint"),
                ("not", ""),
                ("ipv4", ""),
                ("verdict", "DROPPED"),
                ("label", "app=web"),
                ("ipv6", ""),
            ]
        );
    }

    #[test]
    fn options_are_parsed_around_filters() {
        let a = parse(&[
            "--last",
            "5",
            "--to-namespace",
            "x",
            "-o",
            "json",
            "--server",
            "127.0.0.1:1",
            "--request-timeout",
            "2s",
            "--timeout",
            "250ms",
            "--print-node-name",
            "--color",
            "never",
        ])
        .expect("parses");
        assert_eq!(a.opts.last, Some(5));
        assert_eq!(a.opts.output, OutputFormat::Json);
        assert_eq!(a.opts.conn.server.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(a.opts.conn.request_timeout, Duration::from_secs(2));
        assert_eq!(a.opts.conn.timeout, Duration::from_millis(250));
        assert_eq!(a.opts.conn.lab, "sightline");
        assert!(a.opts.print_node_name);
        assert_eq!(a.opts.color, ColorWhen::Never);
        assert_eq!(flags(&a), vec![("to-namespace", "x")]);
        let a = parse(&["-o", "tab", "--time-format", "RFC3339"]).expect("parses");
        assert_eq!(a.opts.output, OutputFormat::Table);
        assert_eq!(a.opts.time_format, TimeFormat::Rfc3339);
    }

    #[test]
    fn bad_timeouts_are_usage_errors() {
        assert!(parse(&["--timeout", "soon"]).is_err());
        assert!(parse(&["--request-timeout", "0s"]).is_err());
    }
}
