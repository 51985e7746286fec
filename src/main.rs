//! The `shardquant` command. Parsing is clap's; everything else lives in the library.

use clap::Parser;
use shardquant::commands::cli::{Cli, Command, StatsCommand};
use shardquant::commands::convert::Freshness;
use shardquant::error::EXIT_NOT_UP_TO_DATE;
use std::process::ExitCode;

fn main() -> ExitCode {
    // One error style: clap's errors get the same "shardquant: error:" prefix as ours.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            eprint!("shardquant: {}", e.render());
            return ExitCode::from(2);
        }
    };
    let result = match &cli.command {
        Command::Convert(args) if args.check => args.to_options().and_then(|o| {
            let fresh =
                shardquant::commands::convert::check(&args.input_dir, &args.output_dir, &o)?;
            if args.json {
                let (up, why) = match &fresh {
                    Freshness::UpToDate => (true, None),
                    Freshness::Stale(why) => (false, Some(why.clone())),
                };
                println!("{}", serde_json::json!({"up_to_date": up, "reason": why}));
                return Ok(if up {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_NOT_UP_TO_DATE)
                });
            }
            match fresh {
                Freshness::UpToDate if args.quiet > 0 => {}
                Freshness::UpToDate => println!("up to date: {}", args.output_dir.display()),
                Freshness::Stale(why) => {
                    println!("not up to date: {why}");
                    return Ok(ExitCode::from(EXIT_NOT_UP_TO_DATE));
                }
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Convert(args) => args.to_options().and_then(|o| {
            shardquant::interrupt::install();
            shardquant::commands::convert::convert(&args.input_dir, &args.output_dir, &o)
                .map(|_| ExitCode::SUCCESS)
        }),
        Command::Stats(StatsCommand::Inspect(args)) => shardquant::commands::stats::inspect(
            &args.files,
            args.model.as_deref(),
            &args.to_options(),
        )
        .and_then(|i| i.print_as(args.json))
        .map(|text| {
            print!("{text}");
            ExitCode::SUCCESS
        }),
        Command::Stats(StatsCommand::Import(args)) => shardquant::commands::stats::import(
            &args.files,
            &args.model,
            &args.output,
            &args.to_options(),
        )
        .map(|text| {
            print!("{text}");
            ExitCode::SUCCESS
        }),
        Command::Verify(args) => {
            shardquant::commands::verify::verify(&args.dir, args.source.as_deref()).and_then(|v| {
                if args.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&v.to_json()).unwrap_or_default()
                    );
                } else {
                    print!("{}", v.report());
                }
                if v.problems.is_empty() {
                    Ok(ExitCode::SUCCESS)
                } else {
                    Err(shardquant::error::Error::bad_input(format!(
                        "{}: verification found {} problem(s)",
                        args.dir.display(),
                        v.problems.len()
                    )))
                }
            })
        }
        Command::Completions(args) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(args.shell, &mut cmd, "shardquant", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => Err(shardquant::error::Error::output_io(
                    "writing",
                    std::path::Path::new("stdout"),
                    e,
                )),
            }
        }
        Command::Layouts(args) => shardquant::input::layout::describe_shipped(args.name.as_deref())
            .map(|text| {
                print!("{text}");
                ExitCode::SUCCESS
            }),
        Command::Inspect(args) => args
            .plan
            .to_options()
            .and_then(|o| match o.output.export {
                // inspect plans ModelOpt's sharding; the compressed-tensors plan is not shown yet.
                shardquant::compute::Export::CompressedTensors => Err(shardquant::error::Error::usage(
                    "inspect does not plan --export compressed-tensors yet (not built in this version)",
                )
                .with_hint("drop --export to inspect the checkpoint and the ModelOpt plan")),
                _ => Ok(o),
            })
            .and_then(|o| match args.layout_json {
                true => shardquant::commands::inspect::layout_json(&args.dir, &o),
                false => shardquant::commands::inspect::inspect(&args.dir, &o)
                    .and_then(|i| i.print_as(args.json)),
            })
            .map(|text| {
                print!("{text}");
                ExitCode::SUCCESS
            }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shardquant: error: {e}");
            ExitCode::from(e.kind().exit_code())
        }
    }
}
