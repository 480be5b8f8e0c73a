"""Everything about the virtual machine: guest kernel, appliance, accelerator, hypervisor driver."""
