# fish completion for llmctl: copy to ~/.config/fish/completions/llmctl.fish
function __llmctl_instances
    set -l file instances.yaml
    set -q LLMCTL_CONFIG; and set file $LLMCTL_CONFIG
    test -r $file; and sed -n 's/^[[:space:]]*-[[:space:]]*name:[[:space:]]*\([A-Za-z0-9_-]*\).*/\1/p' $file
end

set -l commands up status logs down restart wait url env check
complete -c llmctl -f
complete -c llmctl -n "not __fish_seen_subcommand_from $commands" -a up -d 'Start instances and wait until healthy'
complete -c llmctl -n "not __fish_seen_subcommand_from $commands" -a status -d 'Show instances'
complete -c llmctl -n "not __fish_seen_subcommand_from $commands" -a logs -d 'Print or follow logs'
complete -c llmctl -n "not __fish_seen_subcommand_from $commands" -a down -d 'Stop instances'
complete -c llmctl -n "not __fish_seen_subcommand_from $commands" -a restart -d 'Restart instances'
complete -c llmctl -n "not __fish_seen_subcommand_from $commands" -a wait -d 'Wait until instances are healthy'
complete -c llmctl -n "not __fish_seen_subcommand_from $commands" -a check -d 'Validate the config'
complete -c llmctl -l file -r -F -d 'Config file'
complete -c llmctl -n "not __fish_seen_subcommand_from $commands" -a url -d 'Print an instance URL'
complete -c llmctl -n "not __fish_seen_subcommand_from $commands" -a env -d 'Print URL variables for eval'
complete -c llmctl -n "__fish_seen_subcommand_from up status logs down restart wait url" -a '(__llmctl_instances)'
complete -c llmctl -n "__fish_seen_subcommand_from up" -l no-wait -d 'Do not wait for health'
complete -c llmctl -n "__fish_seen_subcommand_from up" -l timeout -r -d 'Seconds to wait'
complete -c llmctl -n "__fish_seen_subcommand_from up" -l foreground -d 'Supervise in this terminal'
complete -c llmctl -n "__fish_seen_subcommand_from up status down restart wait" -l json -d 'JSON output'
complete -c llmctl -n "__fish_seen_subcommand_from wait" -l timeout -r -d 'Seconds to wait'
complete -c llmctl -n "__fish_seen_subcommand_from up" -l force -d 'Ignore the memory budget'
complete -c llmctl -n "__fish_seen_subcommand_from logs" -l raw -d 'Pass control characters through'
complete -c llmctl -n "__fish_seen_subcommand_from status" -s w -l watch -d 'Refresh until Ctrl-C'
complete -c llmctl -n "__fish_seen_subcommand_from logs" -s f -l follow -d 'Follow'
complete -c llmctl -n "__fish_seen_subcommand_from logs" -s n -l lines -r -d 'Number of lines'
